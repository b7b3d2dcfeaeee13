"""Helpers shared by the tests (not a test module): ports, waiting on events, child processes,
a CloudEvents sink and a real S3-protocol server. One definition each; waits take generous
limits and end on the event, never on a fixed sleep."""

from __future__ import annotations

import contextlib
import json
import os
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

__all__ = ["free_port", "wait_until", "wait_for", "wait_http", "spawn", "stop", "Sink", "moto_s3", "FakeKFPApi"]

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
