"""Shared fixtures: a small demo dataset built once per session, an isolated home, a throwaway
PostgreSQL server (started on first use) and the loop store's URL on each backend."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

try:  # the capture sink's package (capture/capture_sink) before an editable install has mapped it
    import capture_sink  # noqa: F401
except ImportError:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "capture"))


@pytest.fixture(scope="session")
def session_home(tmp_path_factory):
    """A private GOURMETGRAM_HOME for the session; the environment is restored afterwards."""
    home = tmp_path_factory.mktemp("gghome")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOURMETGRAM_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@pytest.fixture(scope="session")
def demo_dataset(session_home) -> Path:
    """The full demo dataset (with evaluation sets), built once."""
    from gourmetgram.data.demo import build_demo_dataset

    return build_demo_dataset(session_home / "data" / "demo")


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    code: int
    out: str  # what the command printed
    version: int | None  # the registry version it registered (alias staging right after the run)
    bundle: Path | None  # the exported bundle (ONNX, Triton config, calibration, drift detector)


@pytest.fixture(scope="session")
def demo_pipeline_run(session_home, demo_dataset) -> PipelineRun:
    """`gourmetgram pipeline run` on the demo dataset with configs/demo.yaml, from scratch, once
    per session (about 2 min on 2 cores): the pipeline test asserts on it, and tests that need a
    model that works (the web app's screenshots) serve its bundle. Nothing asserts its accuracy
    beyond the config's own gate: that varies with the CPU (docs/development.md)."""
    import contextlib
    import io

    from gourmetgram import registry
    from gourmetgram.constants import STAGING
    from gourmetgram_app.cli.main import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        # from scratch: other tests may leave a production model in the session's registry
        code = main(["pipeline", "run", "--dataset", str(demo_dataset), "--config", "demo", "--init-from", "scratch"])
    version = registry.version_for(STAGING) if code == 0 else None
    bundle = Path(registry.get_version(version).tags[registry.TAG_BUNDLE]) if version is not None else None
    return PipelineRun(code, buffer.getvalue(), version, bundle)


@pytest.fixture(scope="session")
def small_demo_dataset(demo_dataset, tmp_path_factory) -> Path:
    """Every third image of the demo dataset: the same classes and layout, a third to train on
    (no evaluation suite sets: for configs that gate on the evaluation split alone)."""
    import shutil

    root = tmp_path_factory.mktemp("small-demo") / "demo"
    for split_dir in (demo_dataset / s for s in ("training", "validation", "evaluation")):
        for class_dir in sorted(split_dir.glob("class_*")):
            target = root / split_dir.name / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[::3]:
                shutil.copy2(path, target / path.name)
    shutil.copy2(demo_dataset / "classes.txt", root / "classes.txt")
    return root


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the session (Debian's binaries; see
    :class:`helpers.PostgresServer`), started by the first test that asks for it."""
    from helpers import PostgresServer

    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture()
def postgres_url(postgres) -> str:
    """A new empty database on the session's PostgreSQL server, dropped after the test."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def loop_db_url(request, tmp_path) -> str:
    """The loop store's SQLAlchemy URL on each backend it runs on: SQLite (the local default)
    and PostgreSQL (the cluster's), each empty."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'loop.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture()
def kube_api():
    """A local HTTP server standing in for the Kubernetes API server (none runs here).

    ``start(obj)`` answers every GET and PATCH with ``obj`` (or, with ``routes``, with the
    object whose key the request path ends with) and returns a real
    ``kubernetes.client.ApiClient`` pointed at it plus the list of calls it recorded:
    ``(method, path, content-type, parsed body or None)``.
    """
    servers = []

    def start(obj: dict, routes: dict[str, dict] | None = None):
        calls = []

        class Handler(BaseHTTPRequestHandler):
            def _reply(self):
                routed = [o for suffix, o in (routes or {}).items() if self.path.split("?")[0].endswith(suffix)]
                data = json.dumps(routed[0] if routed else obj).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                calls.append(("GET", self.path, self.headers.get("content-type"), None))
                self._reply()

            def do_PATCH(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                calls.append(("PATCH", self.path, self.headers.get("content-type"), body))
                self._reply()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        from kubernetes import client

        return client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")), calls

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
