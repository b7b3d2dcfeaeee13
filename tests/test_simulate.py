"""The simulated users' documented behaviour, through the real httpx client against a
transport that answers like the gateway (predict with X-Inference-Id and the revision header,
POST /v1/feedback): who answers and how often, corrections, the mistaken few, drift onset and
share, a judge that scripts the feedback. Against the real stack: tests/test_cycle.py."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from gourmetgram.constants import CLIENT_ID_HEADER
from gourmetgram_app.local.simulate import DRIFTED, REGULAR, Behaviour, Photo, Population, SimulatedUsers, night_shot


def _gateway(wrong_on: set[str]):
    """Answers "a" for every photo; the photos whose true label is in ``wrong_on`` say "b"
    inside the image bytes, so the tag is wrong for them. Records every feedback body."""
    feedback: list[dict] = []
    n = {"i": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/feedback":
            feedback.append({**json.loads(request.content), "client": request.headers.get(CLIENT_ID_HEADER)})
            return httpx.Response(200, json={"ok": True})
        n["i"] += 1
        body = json.loads(request.content)


        label = base64.b64decode(body["instances"][0]["image"]["b64"]).decode()
        predicted = "b" if label in wrong_on else label
        return httpx.Response(200, json={"predictions": [{"label": predicted, "confidence": 0.9}]},
                              headers={"x-inference-id": f"id-{n['i']}", "x-gourmetgram-revision": "rev-1"})

    return httpx.Client(transport=httpx.MockTransport(handler)), feedback


def _population() -> Population:
    return Population([Photo(b"a", "a"), Photo(b"c", "c")], [Photo(b"x", "x", DRIFTED)])


def test_feedback_rates_corrections_and_mistakes():
    client, feedback = _gateway(wrong_on={"x"})
    users = SimulatedUsers("http://gw", _population(), Behaviour(drifted_share=0.5), seed=1)
    for _ in range(2000):
        users.upload(client)
    c = users.report.counts()
    regular, drifted = c[("rev-1", REGULAR)], c[("rev-1", DRIFTED)]
    assert 900 < drifted["served"] < 1100 and drifted["right"] == 0 and regular["right"] == regular["served"]
    # right tags: 30% answer; wrong ones: 60%
    assert 0.25 < regular["answers"] / regular["served"] < 0.35
    assert 0.55 < drifted["answers"] / drifted["served"] < 0.65
    # 2% press the other button; 70% of those marking a wrong tag wrong also give the class
    assert 0 < regular["marked_wrong"] < 0.05 * regular["answers"]
    assert 0.65 < drifted["corrected"] / drifted["marked_wrong"] < 0.75
    corrections = [f for f in feedback if "correct_class" in f]
    assert corrections and all(f["correct_class"] == "x" and f["correct"] is False for f in corrections)
    assert len(feedback) == regular["answers"] + drifted["answers"]
    # each answer names the person who sent it: many people, each a small share (the per-client cap)
    per_client = {c: sum(f["client"] == c for f in feedback) for c in {f["client"] for f in feedback}}
    assert all(str(c).startswith("simulated-user-") for c in per_client) and len(per_client) == 50
    assert max(per_client.values()) < 0.1 * len(feedback)


def test_drift_starts_at_its_onset():
    client, _ = _gateway(wrong_on=set())
    users = SimulatedUsers("http://gw", _population(), Behaviour(drifted_share=1.0, drift_onset=10), seed=0)
    served = [users.upload(client) for _ in range(20)]
    assert [s.group for s in served] == [REGULAR] * 10 + [DRIFTED] * 10
    assert users.drift_started_at is not None


def test_a_judge_scripts_the_feedback():
    client, feedback = _gateway(wrong_on=set())
    users = SimulatedUsers("http://gw", _population(), seed=0, judge=lambda s: False)
    for _ in range(30):
        users.upload(client)
    assert len(feedback) == 30 and not any(f["correct"] for f in feedback)
    assert users.report.counts()[("rev-1", REGULAR)]["marked_wrong"] == 30


def test_bad_behaviour_is_refused():
    with pytest.raises(ValueError, match="feedback_rate"):
        Behaviour(feedback_rate=1.5)
    with pytest.raises(ValueError, match="drifted sub-population"):
        SimulatedUsers("http://gw", Population([Photo(b"a", "a")]), Behaviour(drifted_share=0.2))


def test_night_shots_are_darker_photos(tmp_path: Path):
    path = tmp_path / "p.png"
    Image.new("RGB", (16, 16), (200, 180, 160)).save(path)
    pop = Population.from_images([(path, 1)], ["zero", "one"])
    assert pop.regular[0].label == pop.drifted[0].label == "one"


    day = Image.open(io.BytesIO(pop.regular[0].image)).convert("L").getextrema()[1]
    night = Image.open(io.BytesIO(night_shot(path.read_bytes()))).convert("L").getextrema()[1]
    assert night < day * 0.5
