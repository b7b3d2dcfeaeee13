"""`gourmetgram loop` exit codes and output on the quick paths (no services needed), on both
database backends (SQLite and a throwaway PostgreSQL server)."""

from __future__ import annotations

import pytest
from loop_helpers import CLASSES, image

from gourmetgram.loop.store import Store
from gourmetgram.objectstore import ObjectStore
from gourmetgram_app.cli.main import main


@pytest.fixture()
def paths(tmp_path, loop_db_url):
    db, objects = loop_db_url, (tmp_path / "objects").as_uri()
    store, obj = Store(db), ObjectStore(objects)
    for i in range(3):
        key, sha = obj.put_image(image(i))
        store.upsert_sample(f"id{i}", inference_id=f"id{i}", object_key=key, content_sha256=sha,
                            content_type="image/png", label=CLASSES[i], confidence=0.2, model_version="5",
                            stage="production")
    store.dispose()
    return ["--db", db, "--objects", objects]


def test_status_prints_counts(paths, capsys):
    assert main(["loop", "status", *paths[:2]]) == 0
    out = capsys.readouterr().out
    assert "captured 3 (partial 0), with feedback 0, queued 0" in out and "production 3" in out


def test_queue_without_label_studio_keeps_the_queue_and_exits_3(paths, capsys, monkeypatch):
    from gourmetgram_app.local.ports import Ports

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "t0ken")
    dead = f"http://127.0.0.1:{Ports.free().gateway}"
    code = main(["loop", "queue", *paths, "--class-names", ",".join(CLASSES), "--labelstudio-url", dead])
    captured = capsys.readouterr()
    assert code == 3 and "not reachable" in captured.err and "queued 3 sample(s)" in captured.out
    assert main(["loop", "status", *paths[:2]]) == 0
    assert "queued 3 (in Label Studio 0)" in capsys.readouterr().out


def test_queue_without_a_token_is_exit_2(paths, capsys, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert main(["loop", "queue", *paths, "--class-names", ",".join(CLASSES)]) == 2
    assert "LABEL_STUDIO_API_KEY" in capsys.readouterr().err


def test_export_with_too_few_labels_fails_with_the_reason(paths, tmp_path, capsys):
    code = main(["loop", "export", *paths, "--class-names", ",".join(CLASSES), "--output", str(tmp_path / "out")])
    assert code == 1 and "--base" in capsys.readouterr().err


def test_gateway_inference_id_header_and_feedback_route_without_services():
    """The gateway's contract parts that need no running service: every predict response names
    its inference id (a client's sane ce-id is kept, anything else replaced), and /v1/feedback
    without a feedback service is a 503 that says so."""
    import re as _re

    from starlette.testclient import TestClient

    from gourmetgram_app.local.gateway import Gateway, Revision
    from gourmetgram_app.local.manifests import load_stage_manifest
    from gourmetgram_app.local.ports import Ports

    dead = f"http://127.0.0.1:{Ports.free().gateway}"
    gw = Gateway(load_stage_manifest("production"), [Revision("food11-transformer-00001", dead)],
                 logger_enabled=False)
    with TestClient(gw.app()) as client:
        r = client.post("/v1/models/food11:predict", json={"instances": []}, headers={"ce-id": "app-123"})
        assert r.status_code == 503 and r.headers["x-inference-id"] == "app-123"
        r = client.post("/v1/models/food11:predict", json={}, headers={"ce-id": "../../etc/passwd"})
        assert _re.fullmatch(r"[0-9a-f-]{36}", r.headers["x-inference-id"])
        fb = client.post("/v1/feedback", json={"inference_id": "x", "correct": True})
        assert fb.status_code == 503 and "--feedback-url" in fb.json()["error"]
    gw2 = Gateway(load_stage_manifest("production"), [Revision("food11-transformer-00001", dead)],
                  logger_enabled=False, feedback_url=dead)
    with TestClient(gw2.app()) as client:
        fb = client.post("/v1/feedback", json={"inference_id": "x", "correct": True})
        assert fb.status_code == 503 and "not reachable" in fb.json()["error"]
        assert client.post("/v1/feedback", content=b"x" * 70_000,
                           headers={"content-type": "application/json"}).status_code == 413
