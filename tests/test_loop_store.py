"""Closing the loop, storage and policy: migrations, capture from logger events (either order,
redelivered), the feedback API's answers, the selection policy, production accuracy, export.

Everything here runs in-process on a local object folder and on both database backends
(``loop_db_url``: SQLite, the local default, and a throwaway PostgreSQL server, the cluster's),
seconds each; the S3 path runs against moto's real S3 HTTP server in tests/test_loop_s3.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from loop_helpers import CLASSES, ce_headers, image, new_id, request_body, response_body
from starlette.testclient import TestClient

from capture_sink.server import CaptureService, create_app
from gourmetgram.data.layout import validate_dataset
from gourmetgram.loop import quality
from gourmetgram.loop.export import LINEAGE_FILE, ExportError, export_dataset, split_of
from gourmetgram.loop.models import ANNOTATOR, Base, Feedback, Label, Sample
from gourmetgram.loop.policy import queue_samples, select_samples
from gourmetgram.loop.settings import (
    CaptureSettings,
    ExportSettings,
    FeedbackSettings,
    LoopSettings,
    PolicySettings,
    load_loop_settings,
)
from gourmetgram.loop.store import Store, utcnow
from gourmetgram.objectstore import ObjectStore


@pytest.fixture()
def store(loop_db_url):
    s = Store(loop_db_url)
    yield s
    s.dispose()


@pytest.fixture()
def objects(tmp_path):
    return ObjectStore((tmp_path / "objects").as_uri())


def _service(store, objects, **capture) -> CaptureService:
    settings = LoopSettings(capture=CaptureSettings(**capture) if capture else CaptureSettings(),
                            feedback=FeedbackSettings(wait_for_capture_s=0.0))
    return CaptureService(store, objects, settings, CLASSES)


def _capture(client, ce_id, blob, label="two", confidence=0.9, order=("request", "response"), **kw):
    for kind in order:
        body = request_body(blob) if kind == "request" else response_body(label, confidence)
        r = client.post("/", content=body, headers=ce_headers(ce_id, kind, **kw))
        assert r.status_code == 200, r.text


def test_migrations_create_exactly_the_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    assert store.revision() == "0004"
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    Store(store.url).dispose()  # opening again is a no-op migration


def test_an_older_database_upgrades_with_its_rows_and_downgrades(loop_db_url):
    """A database at 0002 with rows in it: opening migrates it to the head through 0003 and 0004
    (the new columns empty: no client, no review, no OOD score or flag), and the head downgrades
    back to 0002."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from gourmetgram.loop.store import alembic_config

    engine = create_engine(loop_db_url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.execute(text("INSERT INTO samples (sample_id, inference_id, instance, captured_at) "
                          "VALUES ('old', 'old', 0, :t)"), {"t": utcnow()})
        conn.execute(text("INSERT INTO feedback (sample_id, correct, correct_class, created_at, updated_at, updates) "
                          "VALUES ('old', false, 'one', :t, :t, 0)"), {"t": utcnow()})
        conn.execute(text("INSERT INTO labels (sample_id, label_source, label, labelled_at) "
                          "VALUES ('old', 'user', 'one', :t)"), {"t": utcnow()})
    store = Store(loop_db_url)
    assert store.revision() == "0004"
    with store.session() as s:
        assert s.get(Feedback, "old").client is None
        old = s.get(Sample, "old")
        assert (old.ood_score, old.in_distribution) == (None, None)  # unknown, never "out of distribution"
        label = s.query(Label).one()
        assert (label.label, label.review, label.reviewed_by) == ("one", None, None)
        assert quality.ground_truth(s) == {"old": ("one", "user")}  # an old correction stays a label
    store.dispose()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT label FROM labels")).scalar() == "one"
    engine.dispose()


def test_capture_pairs_halves_in_either_order_and_stores_duplicates_once(store, objects):
    service = _service(store, objects)
    client = TestClient(create_app(service))
    a, b = new_id(), new_id()
    _capture(client, a, image(1), "two", 0.91)
    _capture(client, b, image(2), "one", 0.42, order=("response", "request"), endpoint="canary")
    for sid, label, stage in ((a, "two", "production"), (b, "one", "canary")):
        s = store.get_sample(sid)
        assert s.complete and s.label == label and s.stage == stage and s.model_version == "3"
        assert s.revision == "food11-transformer-00001" and s.top_k[0]["label"] == label
        assert objects.get(s.object_key) == (image(1) if sid == a else image(2))  # object behind the row
    # redelivery of both halves: nothing changes, counted as duplicates
    r1 = client.post("/", content=request_body(image(1)), headers=ce_headers(a, "request"))
    r2 = client.post("/", content=response_body("two", 0.91), headers=ce_headers(a, "response"))
    assert r1.json()["outcome"] == r2.json()["outcome"] == "duplicate"
    assert store.count_samples() == 2
    metrics = client.get("/metrics").text
    assert "capture_events_duplicate_total 2.0" in metrics
    # not a CloudEvent / bad payload -> 400, counted
    assert client.post("/", content=b"{}", headers={"content-type": "application/json"}).status_code == 400
    bad = ce_headers(new_id(), "request")
    assert client.post("/", content=b'{"instances": 3}', headers=bad).status_code == 400
    assert "capture_events_invalid_total 2.0" in client.get("/metrics").text


def test_sampling_rate_per_stage_is_consistent_for_request_and_response(store, objects):
    service = _service(store, objects, sampling={"staging": 0.0, "canary": 1.0, "production": 0.5})
    client = TestClient(create_app(service))
    ids = [new_id() for _ in range(60)]
    for i, ce_id in enumerate(ids):
        _capture(client, ce_id, image(i), isvc="food11")
    _capture(client, new_id(), image(99), isvc="food11-staging")
    with store.session() as s:
        rows = s.query(Sample).all()
    assert all(r.complete for r in rows)  # never half a sample: both halves drew the same
    assert 10 < len(rows) < 50 and all(r.stage == "production" for r in rows)
    assert 'capture_events_sampled_out_total{stage="staging"} 2.0' in client.get("/metrics").text


BAD_FEEDBACK = [
    (b"not json", 400, "must be JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"correct": True}).encode(), 400, "inference_id"),
    (json.dumps({"inference_id": "x", "correct": "yes"}).encode(), 400, "true or false"),
    (json.dumps({"inference_id": "x", "correct": False, "correct_class": "pizza"}).encode(), 400,
     "valid classes: zero, one, two, three"),
    (json.dumps({"inference_id": "x", "correct": False, "flag": "spam"}).encode(), 400, "not_food"),
    (json.dumps({"inference_id": "x", "correct": False, "extra": 1}).encode(), 400, "unknown field"),
    (json.dumps({"inference_id": "x" * 5000, "correct": False}).encode(), 413, "limit"),
    (json.dumps({"inference_id": "no-such-id", "correct": False}).encode(), 404, "no captured prediction"),
]


@pytest.mark.parametrize("body,status,message", BAD_FEEDBACK)
def test_bad_feedback_gets_its_4xx(store, objects, body, status, message):
    client = TestClient(create_app(_service(store, objects)))
    r = client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and message in r.json()["error"], r.text


def test_feedback_stores_updates_in_place_and_feeds_metrics(store, objects):
    client = TestClient(create_app(_service(store, objects)))
    ids = [new_id() for _ in range(4)]
    for i, ce_id in enumerate(ids):  # unsure predictions: a correction is a label at once
        _capture(client, ce_id, image(10 + i), "two", 0.5)
    r = client.post("/v1/feedback", json={"inference_id": ids[0], "correct": True})
    assert r.status_code == 200 and r.json()["correct"] is True and r.json()["predicted_label"] == "two"
    assert r.json()["model_version"] == "3" and r.json()["updates"] == 0 and r.json()["label_status"] == "none"
    r = client.post("/v1/feedback", json={"inference_id": ids[0], "correct": False, "correct_class": "three"})
    assert r.status_code == 200 and r.json()["updates"] == 1 and r.json()["correct_class"] == "three"
    assert r.json()["label_status"] == "label"
    contradiction = client.post("/v1/feedback", json={"inference_id": ids[1], "correct": True, "correct_class": "one"})
    assert contradiction.status_code == 400
    client.post("/v1/feedback", json={"inference_id": ids[1], "correct": False, "flag": "not_food"})
    client.post("/v1/feedback", json={"inference_id": ids[2], "correct": True})
    with store.session() as s:
        labels = s.query(Label).all()
        acc = quality.production_accuracy(s)["3"]
    assert [(lb.sample_id, lb.label, lb.label_source) for lb in labels] == [(ids[0], "three", "user")]
    assert (acc["feedback"].correct, acc["feedback"].total) == (1, 3)
    assert (acc["labels"].correct, acc["labels"].total) == (0, 1)
    m = client.get("/metrics").text
    assert 'gourmetgram_feedback{kind="wrong",model_version="3"} 2.0' in m
    assert 'gourmetgram_feedback{kind="not_food",model_version="3"} 1.0' in m
    assert 'gourmetgram_production_accuracy{model_version="3",source="feedback"} 0.333' in m
    # withdrawing the correction removes the user label
    client.post("/v1/feedback", json={"inference_id": ids[0], "correct": True})
    with store.session() as s:
        assert s.query(Label).count() == 0


def test_metrics_export_captured_per_class_label_sources_and_the_labelling_backlog(store, objects):
    """What the Data and Model quality dashboards read, from the database at scrape time."""
    from prometheus_client.parser import text_string_to_metric_families

    from gourmetgram.loop.models import LabelTask

    client = TestClient(create_app(_service(store, objects)))
    ids = [new_id() for _ in range(6)]
    for i, (ce_id, label) in enumerate(zip(ids, ["two", "two", "one", "three", "two", "one"])):
        _capture(client, ce_id, image(30 + i), label, confidence=0.5 if i == 0 else 0.9,
                 endpoint="canary" if i == 5 else "default")
    client.post("/", content=request_body(image(99)), headers=ce_headers(new_id(), "request"))  # half: not counted
    client.post("/v1/feedback", json={"inference_id": ids[0], "correct": False, "correct_class": "one"})
    now = utcnow()
    with store.write() as s:
        for i, pushed in ((1, True), (2, False), (3, True), (4, False)):
            s.add(LabelTask(sample_id=ids[i], reason="random", queued_at=now, queue_day=now.date(),
                            ls_task_id=100 + i if pushed else None))
        s.add(Label(sample_id=ids[3], label_source=ANNOTATOR, label="three", labelled_by="a@x", labelled_at=now))

    def samples(name):
        text = client.get("/metrics").text
        return {tuple(sorted(x.labels.items())): x.value for f in text_string_to_metric_families(text)
                for x in f.samples if x.name == name}

    captured = samples("gourmetgram_captured_samples")
    assert captured == {
        (("class_name", "two"), ("model_version", "3"), ("stage", "production")): 3,
        (("class_name", "one"), ("model_version", "3"), ("stage", "production")): 1,
        (("class_name", "three"), ("model_version", "3"), ("stage", "production")): 1,
        (("class_name", "one"), ("model_version", "3"), ("stage", "canary")): 1,
    }
    assert samples("gourmetgram_labels") == {(("class_name", "one"), ("source", "user")): 1,
                                             (("class_name", "three"), ("source", "annotator")): 1}
    # ids[3] is labelled: out of the backlog; ids[1] pushed, ids[2] and ids[4] not yet
    assert samples("gourmetgram_labelling_backlog") == {(("state", "in_label_studio"),): 1,
                                                        (("state", "waiting"),): 2}


def test_capture_keeps_the_answers_ood_score_and_flag_from_v1_and_v2(store, objects):
    """The transformer's ood_score and in_distribution reach the sample (v1 predictions and v2
    outputs); an older answer without them leaves both unknown."""
    client = TestClient(create_app(_service(store, objects)))
    a, b, c = new_id(), new_id(), new_id()
    for ce_id, ood in ((a, {"ood_score": -1.5, "in_distribution": False}), (b, {})):
        client.post("/", content=request_body(image(40)), headers=ce_headers(ce_id, "request"))
        top = [{"label": "one", "class_index": 1, "confidence": 0.8}]
        body = json.dumps({"predictions": [{**top[0], "top_k": top, **ood}]}).encode()
        assert client.post("/", content=body, headers=ce_headers(ce_id, "response")).status_code == 200
    v2 = {"id": c, "model_name": "food11", "outputs": [
        {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["two"]},
        {"name": "class_index", "shape": [1], "datatype": "INT64", "data": [2]},
        {"name": "confidence", "shape": [1], "datatype": "FP32", "data": [0.7]},
        {"name": "ood_score", "shape": [1], "datatype": "FP32", "data": [-9.25]},
        {"name": "in_distribution", "shape": [1], "datatype": "BOOL", "data": [True]}]}
    client.post("/", content=request_body(image(41)), headers=ce_headers(c, "request"))
    assert client.post("/", content=json.dumps(v2).encode(), headers=ce_headers(c, "response")).status_code == 200
    got = {sid: store.get_sample(sid) for sid in (a, b, c)}
    assert (got[a].ood_score, got[a].in_distribution) == (-1.5, False)
    assert (got[b].ood_score, got[b].in_distribution) == (None, None)
    assert (got[c].ood_score, got[c].in_distribution, got[c].label, got[c].confidence) == (-9.25, True, "two",
                                                                                          pytest.approx(0.7))


def test_policy_queues_out_of_distribution_photos_as_their_own_reason(store, objects):
    for i in range(6):
        _sample(store, objects, i, confidence=0.97)
    for i in (2, 4):
        store.upsert_sample(f"s{i:03d}", ood_score=-1.0, in_distribution=False)
    store.upsert_sample("s003", ood_score=-12.0, in_distribution=True)
    policy = PolicySettings(low_confidence=0.5, random_share=0.0, daily_budget=10)
    assert queue_samples(store, policy) == [("s002", "out_of_distribution"), ("s004", "out_of_distribution")]
    _sample(store, objects, 9, confidence=0.97)
    store.upsert_sample("s009", in_distribution=False)
    off = PolicySettings(low_confidence=0.5, random_share=0.0, out_of_distribution=False)
    assert queue_samples(store, off) == []  # the reason can be turned off


def test_calibration_error_per_model_version_from_labelled_samples(store, objects):
    """ECE of the served confidence against the labels, per version, on all labelled samples and
    on the random share; exported and in the summary."""
    from prometheus_client.parser import text_string_to_metric_families

    from gourmetgram.calibration import expected_calibration_error
    from gourmetgram.loop.models import LabelTask

    now = utcnow()
    ids = [_sample(store, objects, i, confidence=0.9) for i in range(10)]  # all predicted "two"
    truth = [i < 6 for i in range(10)]
    with store.write() as s:
        for i, sample_id in enumerate(ids):
            s.add(Label(sample_id=sample_id, label_source=ANNOTATOR, label="two" if truth[i] else "one",
                        labelled_by="a@x", labelled_at=now))
        for i in range(4):
            s.add(LabelTask(sample_id=f"s{i:03d}", reason="random", queued_at=now, queue_day=now.date()))
    client = TestClient(create_app(_service(store, objects)))
    values = {tuple(sorted(x.labels.items())): x.value for f in text_string_to_metric_families(client.get("/metrics").text)
              for x in f.samples if x.name == "gourmetgram_production_ece"}
    everything = expected_calibration_error([0.9] * 10, truth)  # confident 0.9, right 6 of 10: 0.3
    assert everything == pytest.approx(0.3)
    assert values[(("model_version", "3"), ("source", "labels"))] == pytest.approx(everything)
    assert values[(("model_version", "3"), ("source", "labels_random"))] == pytest.approx(0.1)  # 4 right of 4
    v3 = client.get("/summary").json()["accuracy_by_version"][0]
    assert v3["ece"] == {"labels": {"value": pytest.approx(0.3), "n": 10},
                         "labels_random": {"value": pytest.approx(0.1), "n": 4}}


def test_the_business_metric_sql_counts_kept_and_changed_tags_per_stage_and_version(store, objects):
    """docs/business-metric.md's SQL (quality.TAG_KEEP_RATE_SQL) on a real store: a photo with no
    answer keeps its tag, one marked wrong (with or without a class) does not; the window is by
    capture time; it agrees with the canary analysis's marked-wrong rate (1 - tag keep rate)."""
    from pathlib import Path

    client = TestClient(create_app(_service(store, objects)))
    prod = [new_id() for _ in range(8)]
    canary = [new_id() for _ in range(4)]
    for i, ce_id in enumerate(prod):
        _capture(client, ce_id, image(50 + i))
    for i, ce_id in enumerate(canary):
        _capture(client, ce_id, image(70 + i), endpoint="canary", version="4")
    answers = {prod[0]: {"correct": True}, prod[1]: {"correct": False},
               prod[2]: {"correct": False, "correct_class": "one"}, prod[3]: {"correct": True, "flag": "inappropriate"},
               canary[0]: {"correct": False}, canary[1]: {"correct": False, "flag": "not_food"}}
    for ce_id, answer in answers.items():
        assert client.post("/v1/feedback", json={"inference_id": ce_id, **answer}).status_code == 200
    old = utcnow() - timedelta(days=2)  # captured before the window: not counted
    with store.write() as s:
        s.query(Sample).filter(Sample.sample_id == prod[7]).update({"captured_at": old})
    until = utcnow() + timedelta(minutes=1)
    with store.session() as s:
        rows = quality.tag_keep_rate(s, until - timedelta(days=1), until)
        revisions = quality.feedback_by_revision(s, until - timedelta(days=1))
    assert [(r.stage, r.model_version, r.tagged, r.answered, r.changed) for r in rows] == [
        ("canary", "4", 4, 2, 2), ("production", "3", 7, 4, 2)]
    assert [r.tag_keep_rate for r in rows] == pytest.approx([0.5, 5 / 7])
    for r in rows:  # the canary analysis's marked-wrong rate over the same photos
        served, answered, correct = next(v for (_, version, stage), v in revisions.items()
                                         if (stage, version) == (r.stage, r.model_version))
        assert (served, answered) == (r.tagged, r.answered)
        assert 1 - r.tag_keep_rate == pytest.approx((answered - correct) / served)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "business-metric.md").read_text()
    assert quality.TAG_KEEP_RATE_SQL.strip() in doc


def _sample(store, objects, i, confidence=0.9, label="two", when=None):
    key, sha = objects.put_image(image(i))
    store.upsert_sample(f"s{i:03d}", inference_id=f"s{i:03d}", instance=0, object_key=key, content_sha256=sha,
                        content_type="image/png", label=label, confidence=confidence, model_version="3")
    return f"s{i:03d}"


def test_policy_priorities_budget_and_queued_once(store, objects):
    from gourmetgram.loop.feedback import record_feedback

    for i in range(40):
        _sample(store, objects, i, confidence=0.3 if i % 10 == 0 else 0.95)
    # s005: a correction of a confident (0.95) prediction, waiting for an annotator; s006: marked wrong
    record_feedback(store, {"inference_id": "s005", "correct": False, "correct_class": "one", "flag": None})
    record_feedback(store, {"inference_id": "s006", "correct": False, "correct_class": None, "flag": None})
    record_feedback(store, {"inference_id": "s007", "correct": True, "correct_class": None, "flag": "inappropriate"})
    policy = PolicySettings(low_confidence=0.5, random_share=0.25, daily_budget=6, seed=1, wrong=False, flagged=False)
    now = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    # confirmation is not optional: wrong/flagged off still queue the pending correction first
    assert [r for _, r in select_samples(store, policy, now)][:2] == ["confirm", "low_confidence"]
    policy = PolicySettings(low_confidence=0.5, random_share=0.25, daily_budget=6, seed=1)
    first = queue_samples(store, policy, now)
    assert [r for _, r in first][:6] == ["confirm", "wrong", "flagged", "low_confidence",
                                        "low_confidence", "low_confidence"]
    assert [s for s, _ in first[:3]] == ["s005", "s006", "s007"] and len(first) == 6
    assert queue_samples(store, policy, now + timedelta(hours=1)) == []  # budget spent today
    second = queue_samples(store, policy, now + timedelta(days=1))
    assert [r for _, r in second] == ["low_confidence"] + ["random"] * 5  # the rest, next day
    assert not {s for s, _ in first} & {s for s, _ in second}  # queued once
    # the random share is a fixed draw per sample: about 25% of the 34 unflagged, confident samples
    everything = PolicySettings(low_confidence=0.5, random_share=0.25, daily_budget=10_000, seed=1)
    rest = select_samples(store, everything, now + timedelta(days=2))
    randoms = len(rest) + len(second) - 1
    assert 3 <= randoms <= 17, randoms


def test_summary_endpoint_counts_accuracy_and_backlog_read_only(store, objects):
    """``GET /summary``: what the web app's operator page shows, counts only (no database address)."""
    from gourmetgram.loop.feedback import record_feedback

    settings = LoopSettings(feedback=FeedbackSettings(wait_for_capture_s=0.0),
                            policy=PolicySettings(low_confidence=0.5, random_share=0.0))
    client = TestClient(create_app(CaptureService(store, objects, settings, CLASSES)))
    empty = client.get("/summary").json()
    assert empty["accuracy_by_version"] == [] and empty["backlog"]["total"] == 0
    for i in range(4):
        _sample(store, objects, i, confidence=0.3 if i == 3 else 0.9)
    key, sha = objects.put_image(image(99))
    store.upsert_sample("v10", inference_id="v10", instance=0, object_key=key, content_sha256=sha,
                        content_type="image/png", label="two", confidence=0.9, model_version="10")
    sure = FeedbackSettings(confirm_confidence=0.95)  # s000's correction (of a 0.9 guess) is a label at once
    record_feedback(store, {"inference_id": "s000", "correct": False, "correct_class": "one", "flag": None},
                    settings=sure)
    record_feedback(store, {"inference_id": "s001", "correct": False, "correct_class": None, "flag": "not_food"})
    record_feedback(store, {"inference_id": "s002", "correct": True, "correct_class": None, "flag": None})
    record_feedback(store, {"inference_id": "v10", "correct": True, "correct_class": None, "flag": None})
    # s000 and s001 (marked wrong) queued; s000's correction is a label already: s001 waits
    queue_samples(store, PolicySettings(low_confidence=0.5, random_share=0.0, daily_budget=2))
    r = client.get("/summary")
    assert r.status_code == 200
    body = r.json()
    assert [v["model_version"] for v in body["accuracy_by_version"]] == ["3", "10"]  # numbers, in order
    v3 = body["accuracy_by_version"][0]
    assert v3["feedback"] == {"value": 1 / 3, "correct": 1, "n": 3}
    assert v3["labels"] == {"value": 0.0, "correct": 0, "n": 1}  # the user's correction
    assert v3["kinds"] == {"wrong": 2, "corrected": 1, "not_food": 1, "correct": 1}
    assert body["backlog"] == {"total": 2, "to_queue": 1, "queued": 1, "waiting": 1, "in_label_studio": 0,
                               "to_queue_by_reason": {"confirm": 0, "wrong": 0, "flagged": 0,
                                                      "out_of_distribution": 0, "low_confidence": 1,
                                                      "random": 0}}
    assert body["captured"] == 5 and body["with_feedback"] == 4
    assert "loop.db" not in r.text and "objects" not in r.text  # nothing but counts
    assert client.post("/summary").status_code == 405  # read-only
    Base.metadata.drop_all(store.engine)  # the database gone: a 503 that says so, not a 500
    r = client.get("/summary")
    assert r.status_code == 503 and "database cannot be read" in r.json()["error"]


def test_export_splits_by_content_hash_with_lineage_and_validates(store, objects, tmp_path, demo_dataset):
    shares = ExportSettings(evaluation_share=0.2, validation_share=0.1)
    # the same photo captured twice (two inference ids): exported once
    ids = [_sample(store, objects, i, label=CLASSES[i % 4]) for i in range(60)]
    key, sha = objects.put_image(image(0))
    store.upsert_sample("dup", inference_id="dup", object_key=key, content_sha256=sha, content_type="image/png",
                        label="zero", confidence=0.9, model_version="4")
    with store.write() as s:
        for sid in ids + ["dup"]:
            truth = CLASSES[int(sid[1:]) % 4] if sid != "dup" else "zero"
            s.add(Label(sample_id=sid, label_source=ANNOTATOR, label=truth, labelled_by="ann@x",
                        labelled_at=utcnow()))
    report = export_dataset(store, objects, tmp_path / "prod", CLASSES, shares)
    assert report.files == 60 and sum(report.per_split.values()) == 60
    validate_dataset(tmp_path / "prod")
    lineage = json.loads((tmp_path / "prod" / LINEAGE_FILE).read_text())
    splits_of_hash: dict[str, set] = {}
    for rec in lineage["samples"]:
        splits_of_hash.setdefault(rec["content_sha256"], set()).add(rec["split"])
        assert rec["rebalanced"] or rec["reserved_for_evaluation"] or rec["split"] == split_of(rec["content_sha256"],
                                                                                                shares)
        assert not rec["reserved_for_evaluation"] or rec["split"] == "evaluation"
        assert rec["label_source"] == ANNOTATOR
        assert (tmp_path / "prod" / rec["file"]).is_file() and rec["model_version"] in ("3", "4")
    assert all(len(v) == 1 for v in splits_of_hash.values())  # never in two splits
    assert sum(r["rebalanced"] for r in lineage["samples"]) <= 12  # at most one per split and class
    # the differential gate's production evaluation set: 30 (configs/loop.yaml) of the 60 images
    assert report.per_split["evaluation"] == shares.min_evaluation_images == 30 and not report.evaluation_note
    # too few labels for every split/class: a clear failure, unless added to a base dataset
    with pytest.raises(ExportError, match="--base"):
        with store.write() as s:
            s.query(Label).filter(Label.sample_id.in_(ids[4:])).delete()
        export_dataset(store, objects, tmp_path / "small", CLASSES, shares)
    names = (demo_dataset / "classes.txt").read_text().split()
    with store.write() as s:
        for sid in ids[:4]:
            s.query(Label).filter_by(sample_id=sid).update({"label": names[0]})
    merged = export_dataset(store, objects, tmp_path / "merged", names, shares, base=demo_dataset)
    assert merged.files >= 1
    validate_dataset(tmp_path / "merged")
    base_files = sum(1 for _ in (demo_dataset / "training").rglob("*.jpg"))
    assert sum(1 for _ in (tmp_path / "merged" / "training").rglob("*.jpg")) >= base_files


def test_export_reserves_a_production_evaluation_set_with_power_or_says_why_not(store, objects, tmp_path,
                                                                              demo_dataset):
    from gourmetgram.loop.export import reserve_evaluation

    names = (demo_dataset / "classes.txt").read_text().split()
    shares = ExportSettings(evaluation_share=0.2, validation_share=0.1, min_evaluation_images=10,
                            max_evaluation_share=0.5)
    ids = [_sample(store, objects, i, label=names[1]) for i in range(40)]
    with store.write() as s:
        for k, sid in enumerate(ids):
            s.add(Label(sample_id=sid, label_source=ANNOTATOR, label=names[k % 4], labelled_by="ann@x",
                        labelled_at=utcnow()))
    report = export_dataset(store, objects, tmp_path / "enough", names, shares, base=demo_dataset)
    lineage = json.loads((tmp_path / "enough" / LINEAGE_FILE).read_text())
    hashed = sum(split_of(r["content_sha256"], shares) == "evaluation" for r in lineage["samples"])
    assert hashed < 10 and report.per_split["evaluation"] == 10 and report.reserved == 10 - hashed
    assert not report.evaluation_note and "reserved for evaluation" in report.summary()
    reserved = [r for r in lineage["samples"] if r["reserved_for_evaluation"]]
    assert len(reserved) == report.reserved and all(r["split"] == "evaluation" for r in reserved)
    assert lineage["splits"]["min_evaluation_images"] == 10
    # too few labels for the reserve: at most half of them, and a clear warning with what is missing
    few = ExportSettings(evaluation_share=0.2, validation_share=0.1, min_evaluation_images=30,
                         max_evaluation_share=0.5)
    report = export_dataset(store, objects, tmp_path / "few", names, few, base=demo_dataset)
    assert report.per_split["evaluation"] == 20 and report.per_split["training"] + report.per_split["validation"] == 20
    assert "the production evaluation set has 20 image(s), fewer than the 30" in report.evaluation_note
    assert "label about 20 more production sample(s)" in report.evaluation_note
    assert "WARNING: the production evaluation set has 20 image(s)" in report.summary()
    assert json.loads((tmp_path / "few" / LINEAGE_FILE).read_text())["splits"]["evaluation_note"] == report.evaluation_note
    # without a base every class keeps a training image
    labels = {f"{k:064x}": names[k % 2] for k in range(8)}
    assigned = {sha: "training" for sha in labels}
    moved = reserve_evaluation(assigned, labels, few, keep_training_per_class=True)
    assert len(moved) == 4 and {labels[sha] for sha, split in assigned.items() if split == "training"} == set(names[:2])


def test_a_triggered_retrain_exports_the_labelled_production_data_first(store, objects, tmp_path, demo_dataset):
    from gourmetgram.loop.models import USER
    from gourmetgram_app.local.cycle import Cycle, CycleSettings

    def export(base, workdir) -> tuple[str, dict, list]:
        steps: list = []
        cycle = Cycle(CycleSettings(base=base, db=store.url, objects=objects.url, workdir=workdir),
                      out=lambda line: None, on_step=lambda step, data: steps.append((step, data)))
        return cycle.export(), cycle.result.labels, steps

    # nothing labelled yet: the job trains on the base dataset alone (and records that)
    path, labels, steps = export(demo_dataset, tmp_path / "none")
    assert (path, labels) == ("", {}) and steps == [("export", {"labels": {}, "exported": {}, "production_dataset": None})]
    names = (demo_dataset / "classes.txt").read_text().split()
    ids = [_sample(store, objects, i, label=names[1]) for i in range(6)]
    with store.write() as s:
        for k, sid in enumerate(ids):
            s.add(Label(sample_id=sid, label_source=ANNOTATOR if k < 4 else USER, label=names[0],
                        labelled_by="ann@x", labelled_at=utcnow()))
    path, labels, steps = export(demo_dataset, tmp_path / "run")
    assert path == str(tmp_path / "run" / "production-data") and labels == {ANNOTATOR: 4, USER: 2}
    assert steps[0][1]["labels"] == labels and steps[0][1]["production_dataset"] == path
    assert validate_dataset(Path(path)).class_names == names  # what the pipeline merges in
    # a base that is not a local folder (a URL for a cluster run): nothing exported here
    assert export("s3://bucket/food11.tar.gz", tmp_path / "x")[0] == ""


def test_loop_config_is_checked(tmp_path):
    assert load_loop_settings().policy.daily_budget > 0
    bad = tmp_path / "loop.yaml"
    bad.write_text("capture:\n  sampling:\n    prod: 2\n")
    from gourmetgram.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown stage 'prod'"):
        load_loop_settings(bad)
    bad.write_text("policy:\n  daly_budget: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'policy.daly_budget'"):
        load_loop_settings(bad)
