"""Exit codes by cause, from real `gourmetgram` processes: 1 a check failed, 2 bad input,
3 a dependency unavailable; each with a message that says what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gourmetgram.constants import REPO_ROOT
from gourmetgram.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_DEPENDENCY_UNAVAILABLE,
    BadInput,
    CheckFailed,
    ConfigError,
    DatasetError,
    DependencyUnavailable,
    GourmetGramError,
)
from gourmetgram.rollout.local import CONTROL_PATH
from gourmetgram_app.local.ports import Ports


def gourmetgram(*argv: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed entry point's code, run as its own process (what a person's shell gets)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "transformers"), str(REPO_ROOT / "detectors"),
         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "gourmetgram_app.cli.main", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


def dead_url() -> str:
    """A localhost URL that nobody listens on (a fresh ephemeral port, not bound)."""
    return f"http://127.0.0.1:{Ports.free().gateway}"


def test_error_classes_carry_their_exit_codes():
    import gourmetgram.errors as errors

    assert not hasattr(errors, "UserError")  # one name for bad input
    assert issubclass(ConfigError, BadInput) and issubclass(DatasetError, BadInput)
    assert {cls.exit_code for cls in (BadInput, CheckFailed, DependencyUnavailable)} == {2, 1, 3}
    assert all(issubclass(c, GourmetGramError) for c in (BadInput, CheckFailed, DependencyUnavailable))


def test_help_documents_the_exit_codes():
    out = gourmetgram("--help").stdout
    assert "exit codes:" in out
    for line in ("1    a check failed", "2    bad input", "3    a dependency is unavailable"):
        assert line in out


def test_bad_flag_exits_2():
    result = gourmetgram("rollout", "canary", "--percent", "lots")
    assert result.returncode == EXIT_BAD_INPUT
    assert "--percent" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "slo.yaml"
    bad.write_text("p95_ms: 100\nmax_error_rate: 0.01\nmin_rps: 1\nmin_request: 5\n")
    result = gourmetgram("loadtest", "--slo", str(bad), "--host", dead_url())
    assert result.returncode == EXIT_BAD_INPUT
    assert f"{bad}: unknown key 'min_request'; allowed in the top level: p95_ms" in result.stderr


def test_unreachable_gateway_exits_3_saying_how_to_start_it():
    result = gourmetgram("rollout", "status", "--gateway", dead_url())
    assert result.returncode == EXIT_DEPENDENCY_UNAVAILABLE, result.stderr
    assert "is not reachable" in result.stderr and "gourmetgram serve --stage production" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def gateway_control_api():
    """A stand-in for the gateway's control API (GET status: a canary at 10%), so that
    `rollout analyze` gets past the gateway and reaches Prometheus. Only the status read
    is answered; the real gateway is tested in test_rollout.py and test_serving_stack.py."""
    status = {"inferenceservice": "food11", "namespace": "default", "configuration": "food11-predictor",
              "model": "food11", "latest_rolledout_revision": "food11-predictor-00001",
              "latest_revision": "food11-predictor-00002", "canary_traffic_percent": 10,
              "revisions": [{"name": "food11-predictor-00001"}, {"name": "food11-predictor-00002"}]}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = json.dumps(status).encode() if self.path == CONTROL_PATH else b"{}"
            self.send_response(200 if self.path == CONTROL_PATH else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prometheus_nobody_listens_on_exits_3(gateway_control_api):
    prometheus = dead_url()
    result = gourmetgram("rollout", "analyze", "--gateway", gateway_control_api, "--prometheus", prometheus)
    assert result.returncode == EXIT_DEPENDENCY_UNAVAILABLE, result.stdout + result.stderr
    assert f"Prometheus at {prometheus} is not reachable" in result.stderr
    assert "check the URL (--prometheus) or start it" in result.stderr
    assert "Traceback" not in result.stderr


def test_missed_slo_exits_1(tmp_path):
    # A real Locust run against an endpoint that refuses every connection: the SLO check
    # fails (error rate, throughput), which is a failed check, not a crash.
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(images / "red.jpg")
    result = gourmetgram("loadtest", "--host", dead_url(), "--images", str(images), "--users", "1",
                         "--spawn-rate", "1", "--run-time", "3s", "--out", str(tmp_path / "out"))
    assert result.returncode == EXIT_CHECK_FAILED, result.stdout + result.stderr
    assert "SLO: FAIL" in result.stdout and "error rate" in result.stdout
    assert (tmp_path / "out" / "summary.json").is_file()


def test_kubernetes_api_nobody_listens_on_exits_3(tmp_path):
    # A real kubeconfig naming an API server that is not there (the kubernetes client, not a stand-in).
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: gone, cluster: {{server: "{dead_url()}"}}}}]
users: [{{name: me, user: {{token: not-a-secret}}}}]
contexts: [{{name: gone, context: {{cluster: gone, user: me}}}}]
current-context: gone
""")
    result = gourmetgram("rollout", "status", "--cluster", env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == EXIT_DEPENDENCY_UNAVAILABLE, result.stderr
    assert "the Kubernetes API is not reachable" in result.stderr and "kubeconfig context" in result.stderr


def test_mlflow_nobody_listens_on_is_a_dependency_unavailable(tmp_path, monkeypatch):
    import mlflow

    from gourmetgram.tracking import configure_mlflow

    url = dead_url()
    monkeypatch.setenv("GOURMETGRAM_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not after MLflow's back-off
    before = mlflow.get_tracking_uri()
    try:
        with pytest.raises(DependencyUnavailable, match=f"MLflow at {url} is not available") as err:
            configure_mlflow()
    finally:
        mlflow.set_tracking_uri(before)  # process-wide: leave it as the other tests had it
    assert err.value.exit_code == EXIT_DEPENDENCY_UNAVAILABLE
    assert "set MLFLOW_TRACKING_URI" in str(err.value)


# --- errors applied once: every process's main(), every Starlette server ----------------------

def _main_modules() -> list[Path]:
    """Every module that runs as a process: ``if __name__ == "__main__": sys.exit(main())``."""
    roots = ["gourmetgram", "gourmetgram_app", "capture", "detectors", "transformers", "webapp"]
    found = []
    for root in roots:
        for path in (REPO_ROOT / root).rglob("*.py"):
            text = path.read_text()
            if '__name__ == "__main__"' in text and "main()" in text.split('__name__ == "__main__"')[1]:
                found.append(path)
    return found


def test_every_process_maps_errors_to_exit_codes_through_the_one_wrapper():
    """Each ``main()`` is wrapped by ``entry_point`` and none maps an error class by hand (a
    hand-written ``except BadInput: return 2`` let a DependencyUnavailable end in a traceback)."""
    import ast

    modules = _main_modules()
    assert len(modules) >= 8  # the CLI, the servers, quantize: really scanned
    unwrapped, by_hand = [], []
    for path in modules:
        tree = ast.parse(path.read_text())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        if not mains:  # main imported from the package (``python -m package``)
            continue
        decorators = [ast.unparse(d) for d in mains[0].decorator_list]
        if "entry_point" not in decorators:
            unwrapped.append(str(path.relative_to(REPO_ROOT)))
        for handler in (n for n in ast.walk(mains[0]) if isinstance(n, ast.ExceptHandler)):
            caught = ast.unparse(handler.type) if handler.type else ""
            if any(name in caught for name in ("BadInput", "GourmetGramError")):
                by_hand.append(f"{path.relative_to(REPO_ROOT)}:{handler.lineno} except {caught}")
    assert not unwrapped, f"main() without @entry_point: {unwrapped}"
    assert not by_hand, f"errors mapped by hand in main(): {by_hand}"


@pytest.mark.parametrize("error, code", [
    (BadInput("no such dataset"), EXIT_BAD_INPUT),
    (DependencyUnavailable("Prometheus is not reachable"), EXIT_DEPENDENCY_UNAVAILABLE),
    (CheckFailed("the gate rejected it"), EXIT_CHECK_FAILED),
    (KeyboardInterrupt(), 130),
])
def test_entry_point_turns_each_cause_into_its_exit_code_and_a_message(error, code, capsys):
    from gourmetgram.errors import entry_point

    @entry_point
    def main(argv=None):
        raise error

    assert main([]) == code
    err = capsys.readouterr().err
    assert (str(error) in err and err.startswith("error: ")) if str(error) else "interrupted" in err


def test_entry_point_keeps_a_bugs_traceback():
    from gourmetgram.errors import entry_point

    @entry_point
    def main(argv=None):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        main()


def test_label_studio_unavailable_is_a_dependency_unavailable():
    from gourmetgram.loop.labelstudio import LabelStudioUnavailable

    assert issubclass(LabelStudioUnavailable, DependencyUnavailable)
    assert LabelStudioUnavailable.exit_code == EXIT_DEPENDENCY_UNAVAILABLE


def test_the_shared_http_handler_answers_each_cause_with_its_status():
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from gourmetgram.bodylimit import BodyTooLarge
    from gourmetgram.errors import TooManyRequests, Unauthorized, UnsupportedMediaType
    from gourmetgram.http_errors import EXCEPTION_HANDLERS

    errors = {"bad": BadInput("bad photo"), "auth": Unauthorized("token please"), "big": BodyTooLarge(10, 20),
              "media": UnsupportedMediaType("JSON only"), "quota": TooManyRequests("over the cap", 60),
              "down": DependencyUnavailable("database down"), "check": CheckFailed("not now")}

    async def endpoint(request):
        raise errors[request.path_params["what"]]

    app = Starlette(routes=[Route("/{what}", endpoint)], exception_handlers=EXCEPTION_HANDLERS)
    client = TestClient(app)
    statuses = {what: client.get(f"/{what}") for what in errors}
    assert {w: r.status_code for w, r in statuses.items()} == {
        "bad": 400, "auth": 401, "big": 413, "media": 415, "quota": 429, "down": 503, "check": 409}
    assert statuses["bad"].json() == {"error": "bad photo"}
    assert statuses["quota"].headers["retry-after"] == "60"
    assert "the limit is 10 bytes" in statuses["big"].json()["error"]


def test_the_brokers_refusals_come_from_the_shared_handler(tmp_path):
    from starlette.testclient import TestClient

    from gourmetgram_app.local.broker import MAX_BODY_BYTES, Broker, Trigger
    from gourmetgram_app.local.eventstore import EventStore

    broker = Broker([Trigger.parse("sink=http://127.0.0.1:9/")], EventStore(tmp_path / "events.db"))
    with TestClient(broker.app()) as client:
        missing = client.post("/", content=b"{}")
        big = client.post("/", content=b"x" * (MAX_BODY_BYTES + 1))
    assert missing.status_code == 400 and "not a binary-mode CloudEvent: missing" in missing.json()["error"]
    assert big.status_code == 413 and big.json() == {"error": f"event over {MAX_BODY_BYTES} bytes"}
