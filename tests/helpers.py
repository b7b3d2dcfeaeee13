"""Helpers shared by the tests (not a test module): ports, waiting on events, child processes,
a CloudEvents sink, a real S3-protocol server and a throwaway PostgreSQL server. One definition each; waits take generous
limits and end on the event, never on a fixed sleep."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gourmetgram.rollout.prometheus import free_port

__all__ = ["free_port", "wait_until", "wait_for", "wait_http", "spawn", "stop", "Sink", "moto_s3", "PostgresServer",
           "FakeKFPApi"]

T = TypeVar("T")


def wait_until(predicate: Callable[[], Any], timeout_s: float = 60.0, every: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; its last answer, as a bool."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


def wait_for(predicate: Callable[[], T], timeout_s: float = 60.0, what: str = "condition",
             every: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail the test after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _log_tail(proc: subprocess.Popen, log: Path | None) -> str:
    if log is not None:
        return log.read_text(errors="replace")[-3000:]
    if proc.stdout is not None and proc.poll() is not None:
        out = proc.stdout.read()
        return (out.decode(errors="replace") if isinstance(out, bytes) else out)[-3000:]
    return ""


def wait_http(url: str, proc: subprocess.Popen | None = None, log: Path | None = None,
              timeout_s: float = 180.0, any_status: bool = False) -> None:
    """Wait until ``url`` answers 200 (any status with ``any_status``); fail at once, with the
    log's tail, when ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{url}: process exited {proc.returncode}:\n{_log_tail(proc, log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200 or any_status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout_s} s:\n{_log_tail(proc, log) if proc else ''}")


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A child process in its own session, its output to ``log``."""
    env = dict(env if env is not None else os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Terminate ``proc``; kill it if it does not exit within 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not log each request to stderr."""

    def log_message(self, *args):
        pass


class LocalHTTPServer:
    """A ThreadingHTTPServer for ``handler`` on a free 127.0.0.1 port (or ``port``), serving from
    a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str = "", port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Sink(LocalHTTPServer):
    """Records the CloudEvents POSTed to it (a stand-in for the detector / capture sink).

    ``mode`` is ``ok`` or ``hold`` (answer only once ``release`` is set, or after ``hold_cap_s``
    so nothing hangs for ever); :meth:`kill` closes it.
    """

    def __init__(self, hold_cap_s: float = 120.0, port: int = 0) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.mode = "ok"
        self.held = 0  # events received and not answered yet
        self.release = threading.Event()
        sink = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if sink.mode == "hold":
                    sink.held += 1
                    sink.release.wait(hold_cap_s)
                    sink.held -= 1
                sink.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(Handler, "/", port)

    def kill(self) -> None:
        self.close()


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_s3(log: Path) -> Iterator[str]:
    """moto's S3 server (a real S3-protocol HTTP server) in its own process on an ephemeral
    port; yields its URL. The caller sets the client side's credentials (:data:`S3_CREDENTIALS`)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log,
                 env=dict(os.environ, **S3_CREDENTIALS))
    try:
        wait_http(url, proc, log, timeout_s=90, any_status=True)
        yield url
    finally:
        stop(proc)


class PostgresServer:
    """A throwaway PostgreSQL server from Debian's binaries (``scripts/setup.sh`` installs the
    ``postgresql`` package): ``initdb`` in a new temporary folder, ``postgres`` on a free port
    as a child of the test run (it dies with it), listening on 127.0.0.1 and on a unix socket
    in that folder only, password authentication (scram-sha-256) for every connection;
    :meth:`close` stops it and deletes the folder. :meth:`create_database` gives each test its own empty database.

    PostgreSQL refuses to run as root: as root (CI runs the tests so) the server runs as the
    unprivileged ``postgres`` user the package creates (``nobody`` without it), and the
    folder is made over to that user. Durability is switched off (``fsync``, full-page
    writes): the data dies with the test anyway. A missing binary fails the test, with what to
    install (required tools fail, never skip).
    """

    USER = "gourmetgram"

    def __init__(self) -> None:
        import secrets
        import tempfile

        self.bindir = self._bindir()
        self.password = secrets.token_hex(12)
        self.run_as = self._unprivileged_user() if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="gg-postgres-", dir=self._tmp_base()))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        try:
            self._give_to_server_user()
            pwfile = self.dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            self._give_to_server_user(pwfile)
            self._run("initdb", "-D", str(self.data), "-U", self.USER, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
            pwfile.unlink()
            self._start()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _bindir() -> Path:
        import glob
        import shutil

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        initdb = found[-1] if found else shutil.which("initdb")
        if not initdb:
            raise AssertionError("PostgreSQL's initdb is missing: run scripts/setup.sh as root (it installs "
                                 "Debian's postgresql) or 'sudo apt-get install postgresql'")
        return Path(initdb).resolve().parent

    @staticmethod
    def _unprivileged_user() -> tuple[int, int]:
        import pwd

        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return entry.pw_uid, entry.pw_gid
        raise AssertionError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run "
                             "PostgreSQL as (it refuses to run as root)")

    def _tmp_base(self) -> str:
        """The system temp folder when the server's user can reach it (every folder above it
        searchable by others), else /tmp."""
        import stat
        import tempfile

        base = Path(tempfile.gettempdir()).resolve()
        if self.run_as is None or all(p.stat().st_mode & stat.S_IXOTH for p in (base, *base.parents)):
            return str(base)
        return "/tmp"

    def _give_to_server_user(self, path: Path | None = None) -> None:
        if self.run_as is not None:
            os.chown(path or self.dir, *self.run_as)
        os.chmod(path or self.dir, 0o600 if path else 0o700)

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        user = {} if self.run_as is None else {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        out = subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True, env=env,
                             cwd=self.dir, timeout=180, **user)
        if out.returncode != 0:
            raise AssertionError(f"{tool} failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}"
                                 f"{self._log_tail()}")
        return out

    def _log_tail(self) -> str:
        try:
            return "\n" + self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _start(self) -> None:
        """``postgres`` as this process's child, in its own session, stopped by the kernel if
        the test run dies (PR_SET_PDEATHSIG; pg_ctl would daemonize it and leave it running);
        ready once it takes a connection."""
        import psycopg2

        from gourmetgram_app.local.process import die_with_parent

        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                   "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                   "-c", "shared_buffers=32MB", "-c", "max_connections=200"]
        user = {} if self.run_as is None else {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for _attempt in range(3):  # another process may take the free port first
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(self.data), "-c", f"port={self.port}", *options],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir, env=env,
                    start_new_session=True, preexec_fn=die_with_parent, **user)
            deadline = time.monotonic() + 120
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    psycopg2.connect(host="127.0.0.1", port=self.port, user=self.USER, password=self.password,
                                     dbname="postgres", connect_timeout=5).close()
                    return
                except psycopg2.OperationalError:
                    time.sleep(0.1)
            self._stop()
        raise AssertionError(f"PostgreSQL did not start:{self._log_tail()}")

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.USER, password=self.password,
                                dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, driver: str = "postgresql+psycopg2") -> str:
        """A new empty database; its SQLAlchemy URL."""
        import uuid

        name = f"t_{uuid.uuid4().hex[:16]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name, driver)

    def drop_database(self, url: str) -> None:
        """Drop a database :meth:`create_database` made, even with connections still open."""
        self._admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def close(self) -> None:
        import shutil

        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeKFPApi(BaseHTTPRequestHandler):
    """A stand-in for the KFP v2beta1 REST API (no KFP backend runs here), up to the wire that
    the real ``kfp.Client`` speaks: health, experiments (none yet: the client creates one), every
    request recorded as (method, path, lower-cased headers, JSON body). Subclasses answer the
    calls their test makes in ``get``/``post`` (return a JSON body, or None for 404)."""

    requests: list[tuple[str, str, dict, dict]] = []

    def get(self, path: str) -> dict | None:
        return None

    def post(self, path: str, body: dict) -> dict | None:
        return None

    def _reply(self, body: dict | None) -> None:
        if body is None:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        self.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        return body

    def do_GET(self):  # noqa: N802
        self._record()
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False})
        elif self.path.split("?")[0] == "/apis/v2beta1/experiments":
            self._reply({})
        else:
            self._reply(self.get(self.path))

    def do_POST(self):  # noqa: N802
        body = self._record()
        if self.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        else:
            self._reply(self.post(self.path, body))

    def log_message(self, *args):
        pass
