"""The local broker (Knative Broker + Triggers stand-in): fan-out of the logger's events to
the drift detector and the capture sink, filters, retries with back-off, counted drops, and
its store: what it acknowledged survives a kill -9."""

from __future__ import annotations

import re
import signal
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest
from helpers import LocalHTTPServer, QuietHandler
from helpers import wait_until as _wait
from loop_helpers import ce_headers, new_id, request_body

from gourmetgram_app.local.ports import Ports
from gourmetgram_app.local.process import Service, child_env, get_ok


class Subscriber(LocalHTTPServer):
    """Records events; answers ``fail_first`` 503s before accepting."""

    def __init__(self, fail_first: int = 0, port: int = 0) -> None:
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

        super().__init__(Handler, "/", port)


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
                             "--backoff", "0.05", "--retry", "4", "--store", str(tmp_path / "broker.db"),
                             "--trigger", f"detector={detector.url},token-file={token}",
                             "--trigger", f"capture={capture.url},type=org.kubeflow.serving.inference.request",
                             "--trigger", f"flaky={flaky.url}",
                             "--trigger", f"dead=http://127.0.0.1:{dead_port}/"],
                  Path(tmp_path) / "broker.log", lambda: get_ok(f"{url}/healthz"), env=child_env())
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


def _broker(tmp_path: Path, port: int, subscriber_url: str) -> Service:
    url = f"http://127.0.0.1:{port}"
    return Service("broker", [sys.executable, "-m", "gourmetgram_app.local.broker", "--port", str(port),
                              "--backoff", "0.05", "--retry", "1000", "--store", str(tmp_path / "broker.db"),
                              "--trigger", f"capture={subscriber_url}"],
                   tmp_path / "broker.log", lambda: get_ok(f"{url}/healthz"), env=child_env())


def test_what_the_broker_acknowledged_survives_its_kill_9(tmp_path):
    """Events are committed (SQLite, WAL) before the 202; a broker killed with SIGKILL while
    its subscriber is away delivers every one of them after its restart."""
    ports = Ports.free()
    port, sub_port = ports.gateway, ports.webapp
    first = _broker(tmp_path, port, f"http://127.0.0.1:{sub_port}/")  # nobody listens there yet
    first.start(cwd=tmp_path)
    second = None
    try:
        first.wait_ready(60)
        ids = [new_id() for _ in range(30)]
        for ce_id in ids:
            r = httpx.post(f"http://127.0.0.1:{port}", content=request_body(b"x"), headers=ce_headers(ce_id, "request"))
            assert r.status_code == 202 and r.json()["triggers"] == ["capture"]
        assert _metric(httpx.get(f"http://127.0.0.1:{port}/metrics").text, "broker_queue", trigger="capture") == 30
        first.kill()
        assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
        with sqlite3.connect(tmp_path / "broker.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 30

        subscriber = Subscriber(port=sub_port)  # the subscriber is back, and so is the broker
        second = _broker(tmp_path, port, subscriber.url)
        second.start(cwd=tmp_path)
        second.wait_ready(60)
        assert _wait(lambda: len(set(subscriber.ids)) == 30, 60), len(subscriber.ids)
        assert set(subscriber.ids) == set(ids)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert _metric(text, "broker_events_recovered_total", trigger="capture") == 30
        assert _wait(lambda: _metric(httpx.get(f"http://127.0.0.1:{port}/metrics").text, "broker_queue") == 0)
        with sqlite3.connect(tmp_path / "broker.db") as db:  # delivered: nothing left owed or stored
            assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        subscriber.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()
