"""The gateway's forwarding contract, up to the wire: what a client gets when the transformer
is down, hangs, cuts its answer, compresses it, redirects, or repeats a header; what the
transformer gets from the gateway; feedback when its service is down; the readiness probe.

Each upstream is a real socket server (raw bytes where a fault needs them) in a thread; the
gateway is the real ASGI app with its real HTTP client, driven by Starlette's TestClient.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
import threading
from typing import Iterator

import pytest
from helpers import LocalHTTPServer, QuietHandler
from starlette.testclient import TestClient

from gourmetgram_app.local.gateway import Gateway, Revision
from gourmetgram_app.local.gateway.routing import SHADOW
from gourmetgram_app.local.manifests import load_stage_manifest
from gourmetgram_app.local.ports import Ports
from gourmetgram_app.local.readiness import probe_revision

PREDICT = "/v1/models/food11:predict"
BODY = {"instances": [{"image": {"b64": "aGk="}}]}


class RawServer:
    """Accepts connections and misbehaves on purpose: ``hang`` reads the request and never
    answers, ``cut`` promises 100 bytes and closes after 5, ``reset`` closes with an RST."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        if self.mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        if self.mode == "cut":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 100\r\n\r\n{\"pre")
            conn.close()
            return
        self.closed.wait(120)  # hang: never answers
        conn.close()

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass


class EchoTransformer(LocalHTTPServer):
    """A transformer that answers with what it received (method, headers, body length); gzip
    when asked on ``?gzip``, a 307 on ``?redirect``, a header twice on every answer."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                n = int(self.headers.get("content-length", 0))
                body = self.rfile.read(n) if n else b""
                if "redirect" in self.path:
                    self.send_response(307)
                    self.send_header("location", "/elsewhere")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                seen = {"method": self.command, "path": self.path, "body_len": len(body),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "header_names": [k.lower() for k in self.headers]}
                data = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("x-multi", "a")
                self.send_header("x-multi", "b")
                if "gzip" in self.path:
                    data = gzip.compress(data)
                    self.send_header("content-encoding", "gzip")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815

        super().__init__(Handler)


def _gateway(url: str, **kwargs) -> tuple[Gateway, TestClient]:
    gateway = Gateway(load_stage_manifest("staging"), [Revision("rev-1", url, percent=100)],
                      logger_enabled=False, seed=0, **kwargs)
    return gateway, TestClient(gateway.app())


@pytest.fixture
def echo() -> Iterator[EchoTransformer]:
    server = EchoTransformer()
    yield server
    server.close()


def _dead_url() -> str:
    return f"http://127.0.0.1:{Ports.free().gateway}"  # free: nothing listens there


def test_a_transformer_that_is_down_is_a_503_not_reachable():
    url = _dead_url()
    _, tc = _gateway(url)
    with tc:
        r = tc.post(PREDICT, json=BODY)
    assert r.status_code == 503, r.text
    message = r.json()["error"]
    assert message.startswith(f"transformer of revision rev-1 at {url} is not reachable (")
    assert message.endswith("); is it running?")
    assert r.headers["retry-after"] == "1" and r.headers["x-gourmetgram-revision"] == "rev-1"


@pytest.mark.parametrize("mode", ["cut", "reset"])
def test_a_transformer_that_breaks_off_is_a_503_not_reachable(mode):
    server = RawServer(mode)
    try:
        _, tc = _gateway(server.url)
        with tc:
            r = tc.post(PREDICT, json=BODY)
        assert r.status_code == 503, r.text
        assert "is not reachable" in r.json()["error"] and "is it running?" in r.json()["error"]
    finally:
        server.close()


def test_a_transformer_that_hangs_is_a_504_after_the_timeout():
    server = RawServer("hang")
    try:
        gateway, tc = _gateway(server.url, timeout_s=1.0)
        with tc:
            r = tc.post(PREDICT, json=BODY)
            assert r.status_code == 504, r.text
            assert r.json() == {"error": "transformer of revision rev-1 did not answer within 1 s"}
            assert gateway.readiness.ready("rev-1")  # slow is not down: no 503s for the others
    finally:
        server.close()


def test_forwarded_request_keeps_the_end_to_end_headers_only(echo):
    gateway, tc = _gateway(echo.url)
    with tc:
        r = tc.post(PREDICT, content=b"x" * 20_000,
                    headers={"content-type": "application/json", "x-custom": "kept", "ce-id": "abc-1",
                             "x-gourmetgram-tag": "latest", "connection": "keep-alive",
                             "authorization": f"Bearer {gateway.control_token}"})
        # no canary: the tag names nothing, and says so
        assert r.status_code == 404
        r = tc.post(PREDICT, content=b"x" * 20_000,
                    headers={"content-type": "application/json", "x-custom": "kept", "ce-id": "abc-1",
                             "authorization": "Bearer not-the-control-token", "te": "trailers"})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["method"] == "POST" and seen["path"] == PREDICT and seen["body_len"] == 20_000
        headers = seen["headers"]
        assert headers["content-type"] == "application/json" and headers["x-custom"] == "kept"
        assert headers["ce-id"] == "abc-1" == r.headers["x-inference-id"]
        assert headers["content-length"] == "20000"
        assert headers["host"] == echo.url.removeprefix("http://")  # the upstream's, not the client's
        assert headers["authorization"] == "Bearer not-the-control-token"  # not ours: the caller's
        assert "te" not in headers and "x-gourmetgram-tag" not in headers
        assert seen["header_names"].count("content-length") == 1 and seen["header_names"].count("host") == 1
        # a body without a content type is not given one on the way
        r = tc.post(PREDICT, content=b"raw")
        assert r.status_code == 200 and "content-type" not in r.json()["headers"]
        # the control token never reaches the transformer (tag routing is the gateway's)
        r = tc.get("/v2/health/ready", headers={"authorization": f"Bearer {gateway.control_token}"})
        assert r.status_code == 200 and "authorization" not in r.json()["headers"]
        assert r.json()["method"] == "GET" and r.json()["body_len"] == 0


def test_answers_reach_the_client_decoded_unredirected_with_every_header_value(echo):
    _, tc = _gateway(echo.url)
    with tc:
        r = tc.post(PREDICT + "?gzip=1", json=BODY, headers={"accept-encoding": "gzip"})
        # the gateway decodes a compressed answer and says nothing of an encoding it removed
        assert r.status_code == 200 and "content-encoding" not in r.headers
        assert r.json()["path"] == PREDICT + "?gzip=1"
        assert int(r.headers["content-length"]) == len(r.content)
        assert r.headers["content-type"] == "application/json"
        assert r.headers.get("x-multi") == "a, b"  # both values, in order
        r = tc.post(PREDICT + "?redirect=1", json=BODY, follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/elsewhere"  # not followed


def test_feedback_service_down_is_a_503_that_says_so():
    url = _dead_url()
    _, tc = _gateway(_dead_url(), feedback_url=url)
    with tc:
        r = tc.post("/v1/feedback", json={"inference_id": "x", "correct": True})
    assert r.status_code == 503
    message = r.json()["error"]
    assert message.startswith(f"the feedback service at {url} is not reachable (")
    assert message.endswith("); try again shortly")


def test_feedback_is_forwarded_with_its_answer(echo):
    _, tc = _gateway(echo.url, feedback_url=echo.url)
    with tc:
        r = tc.post("/v1/feedback", json={"inference_id": "x", "correct": True})
    assert r.status_code == 200 and r.json()["path"] == "/v1/feedback"
    assert r.json()["headers"]["content-type"] == "application/json"


def test_the_readiness_probe_names_what_is_not_ready(echo):
    gateway, tc = _gateway(echo.url)
    with tc:  # the probe runs on the gateway's own client, on the app's loop
        assert tc.portal.call(gateway._probe, gateway.revisions[0]) is None
        down = Revision("rev-2", _dead_url(), percent=0)
        why = tc.portal.call(gateway._probe, down)
        assert why is not None and why.startswith(f"{down.transformer_url}/v2/health/ready: ")
    assert asyncio.iscoroutinefunction(probe_revision)


def test_canary_and_shadow_pairs_label_their_estimate_with_version_and_stage(tmp_path):
    """A pair the gateway starts for a canary carries the registered version into its
    transformer's label-free estimate (``--model_version``) and a shadow's says ``--stage shadow``:
    else the dashboards and the estimate's alert, which group by version and stage, would not
    tell them apart. The pairs are built, not started."""
    gateway, _ = _gateway("http://127.0.0.1:1", log_dir=tmp_path)

    def flags(pair) -> dict[str, str]:
        argv = pair.transformer.argv
        return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i] in ("--model_version", "--stage")}

    assert flags(gateway._new_pair(tmp_path, "food11-staging-predictor-00002", "7")) == {
        "--model_version": "7", "--stage": "staging"}
    assert flags(gateway._new_pair(tmp_path, "food11-staging-shadow-predictor-00001", "8", stage=SHADOW)) == {
        "--model_version": "8", "--stage": SHADOW}
