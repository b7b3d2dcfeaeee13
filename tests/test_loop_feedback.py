"""Feedback is not a way into the training data: JSON only (415 otherwise, at the capture sink
and at the gateway that forwards it), a correction that contradicts a confident prediction waits
for an annotator (policy reason ``confirm``), a per-client daily cap on corrections, and an
export whose lineage says which labels a person confirmed, and who. On both database backends
(SQLite and a throwaway PostgreSQL server)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from loop_helpers import CLASSES, ce_headers, image, new_id, request_body, response_body
from starlette.testclient import TestClient

from capture_sink.server import CaptureService, create_app
from gourmetgram.constants import CLIENT_ID_HEADER
from gourmetgram.loop import quality
from gourmetgram.loop.labels import annotate, pending_reviews
from gourmetgram.loop.models import ANNOTATOR, CONFIRMED, PENDING, REJECTED, USER, Feedback, Label
from gourmetgram.loop.policy import queue_samples
from gourmetgram.loop.settings import FeedbackSettings, LoopSettings, PolicySettings
from gourmetgram.loop.store import Store
from gourmetgram.objectstore import ObjectStore

OUTSIDER = ("203.0.113.7", 40000)  # an address not allowed to name its users (feedback.client_id_from)
LOCAL = ("127.0.0.1", 40001)  # the local web app's (and gateway's) address: it may


@pytest.fixture()
def store(loop_db_url):
    s = Store(loop_db_url)
    yield s
    s.dispose()


@pytest.fixture()
def objects(tmp_path):
    return ObjectStore((tmp_path / "objects").as_uri())


def _client(store, objects, caller=OUTSIDER, **feedback) -> TestClient:
    settings = LoopSettings(feedback=FeedbackSettings(wait_for_capture_s=0.0, **feedback))
    return TestClient(create_app(CaptureService(store, objects, settings, CLASSES)), client=caller)


def _captured(client, n: int, confidence: float, label: str = "two", start: int = 0) -> list[str]:
    ids = []
    for i in range(n):
        ce_id = new_id()
        for kind in ("request", "response"):
            body = request_body(image(start + i)) if kind == "request" else response_body(label, confidence)
            assert client.post("/", content=body, headers=ce_headers(ce_id, kind)).status_code == 200
        ids.append(ce_id)
    return ids


def _correct(client, inference_id: str, label: str = "one", **headers):
    return client.post("/v1/feedback", json={"inference_id": inference_id, "correct": False, "correct_class": label},
                       headers=headers)


@pytest.mark.parametrize("content_type, body", [
    ("text/plain", None),
    ("text/plain;charset=UTF-8", None),
    ("application/x-www-form-urlencoded", b"inference_id=ID&correct=false&correct_class=one"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="inference_id"\r\n\r\nID\r\n--x--'),
    (None, None),
])
def test_feedback_that_is_not_json_is_415_and_stores_nothing(store, objects, content_type, body):
    """What a cross-site page can send without a CORS preflight is refused, with what to send."""
    client = _client(store, objects)
    [sid] = _captured(client, 1, 0.5)
    payload = (body or json.dumps({"inference_id": sid, "correct": False, "correct_class": "one"}).encode())
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/feedback", content=payload.replace(b"ID", sid.encode()), headers=headers)
    assert r.status_code == 415, r.text
    assert "Content-Type: application/json" in r.json()["error"]
    with store.session() as s:
        assert s.get(Feedback, sid) is None and s.query(Label).count() == 0
    assert 'feedback_requests_total{code="415"} 1.0' in client.get("/metrics").text
    # the same feedback as JSON (with a charset) is taken; a preflight is granted nothing
    r = client.post("/v1/feedback", content=json.dumps({"inference_id": sid, "correct": True}).encode(),
                    headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    preflight = client.options("/v1/feedback", headers={"origin": "https://evil.example",
                                                        "access-control-request-method": "POST",
                                                        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_a_correction_of_a_confident_prediction_waits_for_an_annotator(store, objects):
    client = _client(store, objects, confirm_confidence=0.8)
    sure, unsure = _captured(client, 2, 0.95), _captured(client, 1, 0.5, start=10)
    r = _correct(client, sure[0])
    assert r.status_code == 200 and r.json()["label_status"] == "pending_review"
    assert _correct(client, sure[1], "three").json()["label_status"] == "pending_review"
    assert _correct(client, unsure[0]).json()["label_status"] == "label"  # an unsure guess: a label at once
    with store.session() as s:
        # a pending correction is no ground truth: not in accuracy, label counts, the status's labels
        assert quality.ground_truth(s) == {unsure[0]: ("one", USER)}
        assert quality.label_counts(s) == {(USER, "one"): 1}
        st = quality.status(s)
        assert (st["labelled"], st["corrected_by_user"], st["corrections_pending_review"]) == (1, 1, 2)
        assert [lab.sample_id for lab in pending_reviews(s)] == sure
    # the policy queues both first, with a reason of their own, even with everything else off
    queued = queue_samples(store, PolicySettings(wrong=False, flagged=False, low_confidence=0.0, random_share=0.0))
    assert queued == [(sure[0], "confirm"), (sure[1], "confirm")]
    with store.session() as s:
        assert quality.labelling_backlog(s) == {"waiting": 2, "in_label_studio": 0}  # queued, not labelled
    # an annotator agrees with the first and not with the second
    assert annotate(store, sure[0], "one", "ann@example.org") == "created"
    assert annotate(store, sure[1], "zero", "bob@example.org") == "created"
    with store.session() as s:
        reviews = {lab.sample_id: (lab.review, lab.reviewed_by) for lab in s.query(Label).filter_by(label_source=USER)}
        truth = quality.ground_truth(s)
        assert quality.labelling_backlog(s) == {"waiting": 0, "in_label_studio": 0}
    assert reviews == {sure[0]: (CONFIRMED, "ann@example.org"), sure[1]: (REJECTED, "bob@example.org"),
                       unsure[0]: (None, None)}
    assert truth == {sure[0]: ("one", ANNOTATOR), sure[1]: ("zero", ANNOTATOR), unsure[0]: ("one", USER)}
    # the user changes the correction after the review: decided again against the annotator's label
    assert _correct(client, sure[1], "zero").json()["label_status"] == CONFIRMED
    # withdrawing a pending correction removes it from the queue's reason and the reviews
    late = _captured(client, 1, 0.99, start=20)[0]
    assert _correct(client, late).json()["label_status"] == "pending_review"
    client.post("/v1/feedback", json={"inference_id": late, "correct": True, "correct_class": None})
    with store.session() as s:
        assert pending_reviews(s) == []


def test_the_daily_correction_cap_counts_per_client(store, objects):
    """``feedback.daily_corrections_per_client``: an outside caller is its address (its
    X-Client-Id means nothing); the web app's address may name each visitor."""
    outsider = _client(store, objects, OUTSIDER, daily_corrections_per_client=2)
    ids = _captured(outsider, 8, 0.5)
    assert _correct(outsider, ids[0]).status_code == _correct(outsider, ids[1]).status_code == 200
    r = _correct(outsider, ids[2])
    assert r.status_code == 429 and "one client may send 2 a day" in r.json()["error"]
    assert 0 < int(r.headers["retry-after"]) <= 86_401  # at the next UTC midnight
    r = _correct(outsider, ids[2], **{CLIENT_ID_HEADER: "somebody-else"})  # a header of its own: still capped
    assert r.status_code == 429
    with store.session() as s:
        assert s.get(Feedback, ids[2]) is None  # nothing stored
    # changing one's own correction, and answers that are not corrections, are not capped
    assert _correct(outsider, ids[0], "three").status_code == 200
    for answer in ({"correct": True}, {"correct": False}, {"correct": False, "flag": "not_food"}):
        assert outsider.post("/v1/feedback", json={"inference_id": ids[3], **answer}).status_code == 200
    # another address is another client
    other = _client(store, objects, ("203.0.113.8", 1), daily_corrections_per_client=2)
    assert _correct(other, ids[2]).status_code == 200
    # the web app names its visitors: each has a cap of its own; a malformed id is a 400
    webapp = _client(store, objects, LOCAL, daily_corrections_per_client=2)
    assert [_correct(webapp, i, **{CLIENT_ID_HEADER: "visitor-a"}).status_code for i in ids[4:7]] == [200, 200, 429]
    assert _correct(webapp, ids[6], **{CLIENT_ID_HEADER: "visitor-b"}).status_code == 200
    r = _correct(webapp, ids[7], **{CLIENT_ID_HEADER: "a b"})
    assert r.status_code == 400 and CLIENT_ID_HEADER in r.json()["error"]
    # the next UTC day the cap starts again
    with store.write() as s:
        for fb in s.query(Feedback):
            fb.updated_at = fb.updated_at - timedelta(days=1)
    assert _correct(outsider, ids[7]).status_code == 200
    # who sent it is kept pseudonymous: a hash, never the address or the visitor's id
    with store.session() as s:
        clients = {fb.client for fb in s.query(Feedback)}
        by = {lab.labelled_by for lab in s.query(Label)}
    assert len(clients) == 4 and all(c.startswith("c-") for c in clients)
    assert not any(x in str(clients | by) for x in ("203.0.113", "visitor-a", "127.0.0.1"))
    assert by <= {f"user {c}" for c in clients}


def test_a_cap_of_zero_refuses_every_correction_and_in_process_callers_are_not_capped(store, objects):
    from gourmetgram.loop.feedback import record_feedback

    client = _client(store, objects, daily_corrections_per_client=0)
    [sid] = _captured(client, 1, 0.5)
    assert _correct(client, sid).status_code == 429
    result, _ = record_feedback(store, {"inference_id": sid, "correct": False, "correct_class": "one", "flag": None},
                                settings=FeedbackSettings(daily_corrections_per_client=0))
    assert result["label_status"] == "label"


def test_the_exports_lineage_says_which_labels_were_confirmed_and_by_whom(store, objects, tmp_path, demo_dataset):
    """loop export through the CLI, on both backends: annotators' labels are confirmed by them;
    a user's correction used as it is is not confirmed; a reviewed correction says its review;
    a correction still waiting for an annotator is left out and counted."""
    from gourmetgram.loop.export import LINEAGE_FILE
    from gourmetgram_app.cli.main import main

    names = (demo_dataset / "classes.txt").read_text().split()
    client = TestClient(create_app(CaptureService(store, objects, LoopSettings(
        feedback=FeedbackSettings(wait_for_capture_s=0.0, confirm_confidence=0.8)), names)), client=OUTSIDER)
    sids = []
    for i, confidence in enumerate((0.95, 0.95, 0.5, 0.95, 0.7)):
        ce_id = new_id()
        predicted = {"predictions": [{"label": names[1], "class_index": 1, "confidence": confidence}]}
        assert client.post("/", content=request_body(image(60 + i)), headers=ce_headers(ce_id, "request")).status_code == 200
        assert client.post("/", content=json.dumps(predicted).encode(),
                           headers=ce_headers(ce_id, "response")).status_code == 200
        sids.append(ce_id)
    confirmed, rejected, used_as_is, waiting, annotated = sids
    for sid in (confirmed, rejected, used_as_is, waiting):
        assert _correct(client, sid, names[2]).status_code == 200
    annotate(store, confirmed, names[2], "ann@example.org")
    annotate(store, rejected, names[3], "bob@example.org")
    annotate(store, annotated, names[1], "ann@example.org")  # no user said anything about it
    out = tmp_path / "production"
    args = ["--db", store.url, "--objects", objects.url, "--class-names", ",".join(names)]
    assert main(["loop", "export", *args, "--base", str(demo_dataset), "--output", str(out)]) == 0
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    recs = {r["sample_id"]: r for r in lineage["samples"]}
    assert set(recs) == {confirmed, rejected, used_as_is, annotated}  # the waiting one is left out
    c, r, u, a = recs[confirmed], recs[rejected], recs[used_as_is], recs[annotated]
    assert (c["label"], c["label_source"], c["confirmed"], c["confirmed_by"]) == (names[2], ANNOTATOR, True,
                                                                                 "ann@example.org")
    assert c["user_correction"]["review"] == CONFIRMED and c["user_correction"]["reviewed_by"] == "ann@example.org"
    assert c["user_correction"]["by"].startswith("user c-")
    assert (r["label"], r["confirmed_by"], r["user_correction"]["label"]) == (names[3], "bob@example.org", names[2])
    assert r["user_correction"]["review"] == REJECTED
    assert (u["label"], u["label_source"], u["confirmed"], u["confirmed_by"]) == (names[2], USER, False, None)
    assert u["user_correction"]["review"] is None and u["labelled_by"].startswith("user c-")
    assert a["confirmed"] and a["user_correction"] is None
    assert lineage["confirmation"] == {"confirmed_by_annotator": 3, "unconfirmed_user_corrections": 1,
                                       "user_corrections_confirmed": 1, "user_corrections_rejected": 1,
                                       "user_corrections_waiting_for_review": 1}
    with store.session() as s:
        assert s.query(Label).filter_by(label_source=USER, review=PENDING).count() == 1


def test_the_gateway_forwards_json_feedback_only_with_who_sent_it():
    """The public route: 415 at the gateway for what a cross-site page can send (nothing is
    forwarded); JSON goes to the feedback service with the caller's X-Client-Id and its address
    appended to X-Forwarded-For (the sink's uvicorn trusts the gateway's address for it)."""
    from helpers import Sink

    from gourmetgram_app.local.gateway import Gateway, Revision
    from gourmetgram_app.local.manifests import load_stage_manifest

    sink = Sink()
    gateway = Gateway(load_stage_manifest("production"), [Revision("food11-transformer-00001", "http://127.0.0.1:9")],
                      logger_enabled=False, feedback_url=sink.url.rstrip("/"))
    try:
        with TestClient(gateway.app(), client=("198.51.100.4", 5000)) as client:
            for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
                r = client.post("/v1/feedback", content=b'{"inference_id": "x", "correct": true}', headers=headers)
                assert r.status_code == 415 and "application/json" in r.json()["error"]
            assert sink.events == []
            r = client.post("/v1/feedback", json={"inference_id": "x", "correct": True},
                            headers={CLIENT_ID_HEADER: "visitor-1", "x-forwarded-for": "192.0.2.1"})
            assert r.status_code == 202
        [(headers, body)] = sink.events
        assert json.loads(body) == {"inference_id": "x", "correct": True}
        assert headers["content-type"] == "application/json"
        assert headers["x-client-id"] == "visitor-1"
        assert headers["x-forwarded-for"] == "192.0.2.1, 198.51.100.4"
    finally:
        sink.close()
