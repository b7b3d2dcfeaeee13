"""The local broker (Knative Broker + Triggers stand-in): fan-out of the logger's events to
the drift detector and the capture sink, filters, retries with back-off, counted drops."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest
from helpers import LocalHTTPServer, QuietHandler
from helpers import wait_until as _wait
from loop_helpers import ce_headers, new_id, request_body

from gourmetgram_app.local.stack import Ports, Service, _child_env, _get_ok


class Subscriber(LocalHTTPServer):
    """Records events; answers ``fail_first`` 503s before accepting."""

    def __init__(self, fail_first: int = 0) -> None:
        self.ids: list[str] = []
        self.auth: list[str | None] = []
        self.attempts = 0
        sub = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                sub.attempts += 1
                ok = sub.attempts > fail_first
                if ok:
                    sub.ids.append(self.headers["ce-id"])
                    sub.auth.append(self.headers.get("authorization"))
                self.send_response(202 if ok else 503)
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(Handler, "/")


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? ([0-9.eE+-]+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.fixture()
def broker(tmp_path):
    detector, capture, flaky = Subscriber(), Subscriber(), Subscriber(fail_first=3)
    dead_port = Ports.free().gateway  # nothing listens there
    port = Ports.free().gateway
    url = f"http://127.0.0.1:{port}"
    token = tmp_path / "detector-token"
    token.write_text("s3cret\n")
    svc = Service("broker", [sys.executable, "-m", "gourmetgram_app.local.broker", "--port", str(port),
                             "--backoff", "0.05", "--retry", "4",
                             "--trigger", f"detector={detector.url},token-file={token}",
                             "--trigger", f"capture={capture.url},type=org.kubeflow.serving.inference.request",
                             "--trigger", f"flaky={flaky.url}",
                             "--trigger", f"dead=http://127.0.0.1:{dead_port}/"],
                  Path(tmp_path) / "broker.log", lambda: _get_ok(f"{url}/healthz"), env=_child_env())
    svc.start(cwd=tmp_path)
    svc.wait_ready(60)
    yield url, detector, capture, flaky
    svc.stop()
    for s in (detector, capture, flaky):
        s.close()


def test_broker_fans_out_filters_retries_and_counts_drops(broker):
    url, detector, capture, flaky = broker
    ids = [new_id() for _ in range(5)]
    for ce_id in ids:
        for kind in ("request", "response"):
            r = httpx.post(url, content=request_body(b"x"), headers=ce_headers(ce_id, kind))
            assert r.status_code == 202
    assert httpx.post(url, content=b"{}", headers={"content-type": "application/json"}).status_code == 400
    assert _wait(lambda: len(detector.ids) == 10 and len(capture.ids) == 5 and len(flaky.ids) == 10)
    assert sorted(capture.ids) == sorted(ids)  # the type filter: requests only
    assert sorted(detector.ids) == sorted(ids * 2)
    assert set(detector.auth) == {"Bearer s3cret"} and set(capture.auth) == {None}  # per-trigger credentials
    text = ""

    def settled():
        nonlocal text
        text = httpx.get(f"{url}/metrics").text
        return _metric(text, "broker_deliveries_total", trigger="dead", outcome="dropped") == 10

    assert _wait(settled, 60), text
    assert _metric(text, "broker_deliveries_total", trigger="flaky", outcome="retried") == 3
    assert _metric(text, "broker_deliveries_total", trigger="flaky", outcome="acked") == 10
    assert _metric(text, "broker_deliveries_total", trigger="dead", outcome="retried") == 40
    assert _metric(text, "broker_events_received_total") == 10
