"""`gourmetgram loop` exit codes and output on the quick paths (no services needed)."""

from __future__ import annotations

import pytest
from loop_helpers import CLASSES, image

from gourmetgram.cli.main import main
from gourmetgram.loop.objects import ObjectStore
from gourmetgram.loop.store import Store


@pytest.fixture()
def paths(tmp_path):
    db, objects = f"sqlite:///{tmp_path / 'loop.db'}", (tmp_path / "objects").as_uri()
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
    from gourmetgram.local.stack import Ports

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
