"""Security of the control paths: the gateway's control API (token, JSON, model store), tag
routing behind the token, size limits enforced while the body streams (413 with the server's
peak memory flat), the transformer bound to the stack's host with no gRPC port, the drift
detector's ingest token, and the local Prometheus without its lifecycle API.

Real processes where it matters (the gateway and the transformer are started as the stack
starts them); memory is the process's peak RSS (VmHWM) read from /proc, with a bound far
below the size of what was sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import stat
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import spawn, stop, wait_http

from gourmetgram import control
from gourmetgram.constants import HOST
from gourmetgram_app.cli.main import main
from gourmetgram_app.local.ports import Ports

MiB = 1024 * 1024
LIMIT = 1 * MiB  # the servers under test run with this body limit
OVERSIZED = 48 * MiB  # what each oversized request sends (or declares)
PEAK_BOUND = 24 * MiB  # generous: far below one oversized body, far above noise
ROLLOUT = "/_gourmetgram/rollout"


# -- helpers --------------------------------------------------------------------------------
http = httpx.Client(timeout=60)  # generous: a busy 2-core machine, imports on first use
def peak_rss(pid: int) -> int:
    """The process's high-water-mark resident set size (bytes), from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def raw_post(port: int, path: str, size: int, chunked: bool, headers: dict[str, str] | None = None) -> int:
    """POST ``size`` bytes over a raw socket and return the status code, reading the answer
    WHILE sending: a server that refuses early answers before the body is through (a client
    that sends everything first would see a reset instead of the 413)."""
    sock = socket.create_connection((HOST, port), timeout=120)
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{port}", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in (headers or {}).items()),
             "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    piece = b"x" * (256 * 1024)

    def write() -> None:
        sent = 0
        try:
            while sent < size:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: what a refusal looks like

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        status_line = sock.makefile("rb").readline()
    finally:
        sock.close()
        writer.join(30)
    return int(status_line.split()[1])


def non_loopback_addresses() -> list[str]:
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(a.address.split("%")[0])
            if not ip.is_loopback and not ip.is_link_local:
                found.append(str(ip))
    return found


# -- the gateway as `gourmetgram serve` starts it -------------------------------------------
@pytest.fixture(scope="module")
def gateway(session_home, tmp_path_factory):
    """A real gateway process; its one revision points at a port nobody listens on (the
    requests here are refused before they would be forwarded). Logger on, sink dead."""
    work = tmp_path_factory.mktemp("gw")
    ports = Ports.free()
    token_file = control.token_path(HOST, ports.gateway)
    token_file.unlink(missing_ok=True)  # the gateway writes it itself when run on its own
    log = work / "gateway.log"
    proc = spawn([sys.executable, "-m", "gourmetgram_app.local.gateway", "--manifest",
                   "inference_services/production.yaml", "--revision",
                   f"food11-transformer-00001=http://{HOST}:{ports.transformer_http}",
                   "--host", HOST, "--port", str(ports.gateway), "--log-dir", str(work),
                   "--max-body-bytes", str(LIMIT), "--logger-url", f"http://{HOST}:{ports.triton_http}/"],
                  log)
    url = f"http://{HOST}:{ports.gateway}"
    try:
        wait_http(url + "/healthz", proc, log)
        yield url, proc, control.read_token(token_file)
    finally:
        stop(proc)


def test_control_api_needs_the_token_json_and_a_bundle_from_the_store(gateway, session_home, tmp_path):
    url, _proc, token = gateway
    action = {"action": "canary", "bundle": str(tmp_path), "percent": 10}
    # 401 without (or with a wrong) token, before anything else is looked at
    for headers in ({}, control.bearer("not-the-token"), {"Authorization": token}):
        r = http.post(url + ROLLOUT, json=action, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer" and "control token" in r.json()["error"]
    # a browser's cross-site "simple" request: text/plain (or a form) -> 415
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**control.bearer(token), **({"Content-Type": ctype} if ctype else {})}
        r = http.post(url + ROLLOUT, content=json.dumps(action), headers=headers)
        assert r.status_code == 415, r.text
    # bundles only from the model store: a folder elsewhere, a path escaping it, a symlink out
    store = session_home / "models"
    store.mkdir(exist_ok=True)
    (store / "escape").unlink(missing_ok=True)
    (store / "escape").symlink_to(tmp_path, target_is_directory=True)
    for bundle in (str(tmp_path), f"{store}/../{tmp_path.name}", str(store / "escape"), str(store),
                   "s3://models/7"):
        r = http.post(url + ROLLOUT, json={**action, "bundle": bundle}, headers=control.bearer(token))
        assert r.status_code == 400, (bundle, r.text)
        assert "model store" in r.json()["error"]
    # with all three, the request reaches the controller (which says why it cannot promote)
    r = http.post(url + ROLLOUT, json={"action": "promote"}, headers=control.bearer(token))
    assert r.status_code == 400 and "nothing to promote" in r.json()["error"]
    # reading the status stays open (no secret in it)
    assert http.get(url + ROLLOUT).status_code == 200


def test_control_api_unusable_bundle_paths_are_400(gateway):
    """A bundle path the filesystem cannot even resolve (NUL byte, unknown ~user) is the
    caller's mistake: 400 with the model store named, not a 500."""
    url, _proc, token = gateway
    for bundle in ("models/\u0000x", "~no-such-user-gourmetgram/bundle"):
        r = http.post(url + ROLLOUT, json={"action": "canary", "bundle": bundle, "percent": 10},
                      headers=control.bearer(token))
        assert r.status_code == 400, (bundle, r.text)
        assert "model store" in r.json()["error"]


def test_gateway_feedback_route_bad_bodies_and_odd_answers_are_not_500():
    """/v1/feedback: an oversized body is refused while it streams (chunked too), and a
    feedback service answering something other than a JSON object is passed through."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from starlette.testclient import TestClient

    from gourmetgram_app.local.gateway import FEEDBACK_MAX_BODY_BYTES, Gateway, Revision
    from gourmetgram_app.local.manifests import load_stage_manifest

    class ListAnswer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = b"[1, 2]"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), ListAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    service = f"http://{HOST}:{server.server_address[1]}"
    try:
        gw = Gateway(load_stage_manifest("production"), [Revision("food11-transformer-00001", service)],
                     logger_enabled=False, feedback_url=service)
        with TestClient(gw.app()) as client:
            r = client.post("/v1/feedback", json={"inference_id": "x", "correct": True})
            assert r.status_code == 200 and r.json() == [1, 2], r.text
            as_json = {"content-type": "application/json"}
            r = client.post("/v1/feedback", content=b"", headers=as_json)
            assert r.status_code == 200, r.text  # the service judges an empty body
            chunks = (b"x" * 16384 for _ in range(FEEDBACK_MAX_BODY_BYTES // 16384 + 2))
            r = client.post("/v1/feedback", content=chunks, headers=as_json)  # no Content-Length: chunked
            assert r.status_code == 413 and f"limit is {FEEDBACK_MAX_BODY_BYTES}" in r.json()["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_cli_finds_the_token_in_the_stack_state_folder(gateway, capsys):
    url, _proc, token = gateway
    port = int(url.rsplit(":", 1)[1])
    path = control.token_path(HOST, port)
    assert control.token_for_gateway(url) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # the CLI sends the token: the gateway's own 400 comes back, not a 401
    assert main(["rollout", "canary", "--percent", "10", "--bundle", "/etc", "--gateway", url]) == 2
    err = capsys.readouterr().err
    assert "/etc is outside the model store" in err and "control token" not in err
    # a token file others can read is refused, with the fix in the message
    os.chmod(path, 0o644)
    try:
        assert main(["rollout", "promote", "--gateway", url]) == 2
        assert "chmod 600" in capsys.readouterr().err
    finally:
        os.chmod(path, 0o600)


def test_tag_routing_needs_the_control_token(gateway):
    url, _proc, token = gateway
    body = {"instances": []}
    for headers in ({"X-Gourmetgram-Tag": "prev"}, {"Host": "prev-food11.example.com"}):
        r = http.post(url + "/v1/models/food11:predict", json=body, headers=headers)
        assert r.status_code == 403 and "control token" in r.json()["error"], r.text
        # honoured with the token: no canary now, so no revision carries the tag
        r = http.post(url + "/v1/models/food11:predict", json=body,
                       headers={**headers, **control.bearer(token)})
        assert r.status_code == 404 and "tagged 'prev'" in r.json()["error"], r.text


def test_oversized_bodies_are_refused_while_streaming(gateway):
    url, proc, token = gateway
    port = int(url.rsplit(":", 1)[1])
    path = "/v1/models/food11:predict"
    # warm the code paths first, so the peak measured below is the oversized bodies' alone
    assert raw_post(port, path, 2 * LIMIT, chunked=True) == 413
    before = peak_rss(proc.pid)
    statuses = [raw_post(port, path, OVERSIZED, chunked=chunked) for chunked in (False, True, False, True)]
    grown = peak_rss(proc.pid) - before
    assert statuses == [413] * 4
    assert grown < PEAK_BOUND, f"peak RSS grew {grown / MiB:.1f} MiB over 4 x {OVERSIZED // MiB} MiB posts"
    r = http.post(url + path, content=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and f"limit is {LIMIT} bytes" in r.json()["error"]
    # nothing oversized reached the inference logger's queue
    logger = http.get(url + ROLLOUT).json()["logger"]
    assert logger["queued"] == 0 and logger["sent"] == 0 and logger["dropped"] == 0, logger
    # the control API has its own small limit
    assert raw_post(port, ROLLOUT, OVERSIZED, chunked=True,
                    headers=control.bearer(token)) == 413


def test_logger_queue_is_bounded_by_bytes():
    from prometheus_client import CollectorRegistry, Counter

    from gourmetgram_app.local.gateway import InferenceLogger

    async def scenario() -> tuple[int, float, int]:
        reg = CollectorRegistry()
        sent = Counter("s", "s", ["i"], registry=reg)
        dropped = Counter("d", "d", ["i"], registry=reg)
        logger = InferenceLogger(f"http://{HOST}:9/", "all", "isvc", "ns", sent, dropped,
                                 queue_size=100, workers=1, timeout_s=0.5, queue_bytes=1000)
        await logger.start()
        for _ in range(3):  # no await in between: the worker cannot take one off the queue
            logger.log("id", "request", b"x" * 400, "application/json", "default")
        queued, lost = logger.queued_bytes, logger.dropped._value.get()
        backlog = logger.backlog
        await logger.stop(drain_s=0.1)
        return queued, lost, backlog

    queued, lost, backlog = asyncio.run(scenario())
    assert (queued, backlog, lost) == (800, 2, 1)


# -- the transformer as the stack starts it ----------------------------------------------------
@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    work = tmp_path_factory.mktemp("tf")
    ports = Ports.free()
    log = work / "transformer.log"
    # The predictor is not running: the transformer starts without it (ready, 503 on predict).
    proc = spawn([sys.executable, "-m", "food_transformer", "--model_name", "food11", "--predictor_host",
                   f"{HOST}:{ports.triton_http}", "--protocol", "v2", "--image_size", "32",
                   "--class_names", "a,b,c", "--host", HOST, "--http_port", str(ports.transformer_http),
                   "--grpc_port", str(ports.transformer_grpc), "--max_body_bytes", str(LIMIT)], log)
    try:
        wait_http(f"http://{HOST}:{ports.transformer_http}/v1/models/food11", proc, log)
        yield ports, proc
    finally:
        stop(proc)


def test_transformer_listens_on_the_stack_host_only(transformer):
    ports, proc = transformer
    listening = [c for c in psutil.Process(proc.pid).connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    # exactly the HTTP port, on loopback: no 0.0.0.0 (kserve's default), no gRPC port
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [(HOST, ports.transformer_http)], listening
    # and from a non-loopback address of this machine it cannot be reached
    for address in non_loopback_addresses():
        with pytest.raises(OSError):
            socket.create_connection((address, ports.transformer_http), timeout=5).close()


def test_transformer_caps_what_it_accepts(transformer):
    ports, proc = transformer
    port = ports.transformer_http
    path = "/v1/models/food11:predict"
    assert raw_post(port, path, 2 * LIMIT, chunked=True) == 413
    before = peak_rss(proc.pid)
    statuses = [raw_post(port, path, OVERSIZED, chunked=chunked) for chunked in (False, True)]
    grown = peak_rss(proc.pid) - before
    assert statuses == [413, 413] and grown < PEAK_BOUND, (statuses, grown / MiB)
    # requests within the limit still get kserve's answers (here: a clear 400)
    r = http.post(f"http://{HOST}:{port}{path}", json={"instances": "nope"})
    assert r.status_code == 400


def test_transformer_refuses_grpc_on_a_single_host(capsys):
    from food_transformer.__main__ import main as transformer_main

    assert transformer_main(["--predictor_host", f"{HOST}:1", "--image_size", "32", "--class_names",
                             "a,b", "--enable_grpc", "true"]) == 2
    assert "gRPC" in capsys.readouterr().err


# -- the detector's ingest endpoint ------------------------------------------------------------
def test_detector_ingest_needs_its_token():
    from types import SimpleNamespace

    from starlette.testclient import TestClient

    from drift_detector.server import create_app

    rejected = []
    service = SimpleNamespace(reject=lambda: rejected.append(1), class_names=["a", "b"],
                              submit=lambda event: True, stop=lambda: None)
    with TestClient(create_app(service, token="s3cret")) as client:
        event = {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "org.kubeflow.serving.inference.request",
                 "ce-source": "x", "content-type": "application/json"}
        r = client.post("/", content=b"{}", headers=event)
        assert r.status_code == 401 and rejected == [1]
        r = client.post("/", content=b"{}", headers={**event, **control.bearer("s3cret")})
        assert r.status_code != 401  # past the token check (the event itself is judged next)
        r = client.post("/", content=b"x" * (70 * MiB), headers={**event, **control.bearer("s3cret")})
        assert r.status_code == 413


def test_the_gateway_logger_sends_the_detector_token_only_to_a_local_sink(session_home, monkeypatch):
    monkeypatch.delenv(control.DETECTOR_TOKEN_ENV, raising=False)
    token, path = control.detector_token()
    assert path == session_home / "secrets" / "detector-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert control.sink_token_for(f"http://{HOST}:8070/") == token
    assert control.sink_token_for("http://drift-detector.ns.svc.cluster.local/") is None
    monkeypatch.setenv(control.DETECTOR_TOKEN_ENV, "from-env")
    assert control.sink_token_for("http://localhost:8070/") == "from-env"


# -- local Prometheus ------------------------------------------------------------------------
def test_local_prometheus_has_no_lifecycle_api():
    from gourmetgram.rollout.prometheus import LocalPrometheus

    with LocalPrometheus(f"http://{HOST}:9") as prom:
        for endpoint in ("/-/quit", "/-/reload"):
            assert http.post(prom.url + endpoint, timeout=10).status_code == 403
        assert prom.proc.poll() is None and prom.client().ready()


# -- the detector on the cluster: a NetworkPolicy, since KServe's logger sends no token ---------
def test_chart_restricts_who_reaches_the_detector():
    from gourmetgram import manifests

    for stage in manifests.RENDERED_STAGES:
        objects = manifests.render_objects(stage)
        detector = next(o for o in objects if o["kind"] == "Service"
                        and o["apiVersion"].startswith("serving.knative.dev"))
        pod_labels = detector["spec"]["template"]["metadata"]["labels"]
        [policy] = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "drift-detector"]
        spec = policy["spec"]
        assert policy["metadata"]["namespace"] == detector["metadata"]["namespace"]
        # it selects the detector's pods, for ingress, and allows only the listed peers
        assert all(pod_labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())
        assert spec["policyTypes"] == ["Ingress"]
        peers = spec["ingress"][0]["from"]
        assert peers[0]["podSelector"]["matchExpressions"][0]["key"] == "serving.kserve.io/inferenceservice"
        allowed = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers[1:]}
        # + the capture Broker's namespace: its filter delivers the logger's events (capture on)
        assert allowed == {"knative-serving", "istio-system", "monitoring", "knative-eventing"}
