"""User feedback by inference id: validation and the idempotent write (the feedback API's core).

Contract (kept stable for the web app): ``POST /v1/feedback`` with JSON
``{"inference_id": str, "correct": bool, "correct_class": str (optional), "flag":
"not_food"|"inappropriate" (optional)}`` -> 200 with the stored feedback; unknown inference
id -> 404; unknown class -> 400 naming the valid ones; repeated feedback updates in place;
malformed or oversized -> 4xx.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from gourmetgram.errors import UserError
from gourmetgram.loop.models import FLAGS, USER, Feedback, Label, Sample
from gourmetgram.loop.store import Store, as_utc, utcnow

FIELDS = ("inference_id", "correct", "correct_class", "flag")


class FeedbackError(UserError):
    """A feedback request that cannot be stored; ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_feedback(body: bytes, class_names: Sequence[str], max_bytes: int) -> dict[str, Any]:
    if len(body) > max_bytes:
        raise FeedbackError(413, f"feedback body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FeedbackError(400, 'the body must be JSON: {"inference_id": "...", "correct": true|false, '
                                 '"correct_class": "<class>" (optional), "flag": "not_food"|"inappropriate" '
                                 '(optional)}') from None
    if not isinstance(data, dict):
        raise FeedbackError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise FeedbackError(400, f"unknown field(s) {unknown}; the fields are {list(FIELDS)}")
    inference_id = data.get("inference_id")
    if not isinstance(inference_id, str) or not 0 < len(inference_id) <= 160:
        raise FeedbackError(400, "inference_id must be the X-Inference-Id of a prediction (a non-empty "
                                 "string of at most 160 characters)")
    correct = data.get("correct")
    if not isinstance(correct, bool):
        raise FeedbackError(400, "correct must be true or false")
    correct_class = data.get("correct_class")
    if correct_class is not None:
        if not isinstance(correct_class, str) or correct_class not in class_names:
            raise FeedbackError(400, f"correct_class {correct_class!r} is not a class; valid classes: "
                                     f"{', '.join(class_names)}")
    flag = data.get("flag")
    if flag is not None and flag not in FLAGS:
        raise FeedbackError(400, f"flag {flag!r} is not one of {', '.join(FLAGS)}")
    return {"inference_id": inference_id, "correct": correct, "correct_class": correct_class, "flag": flag}


def feedback_json(sample: Sample, fb: Feedback) -> dict[str, Any]:
    return {
        "inference_id": fb.sample_id, "correct": fb.correct, "correct_class": fb.correct_class,
        "flag": fb.flag, "predicted_label": sample.label, "model_name": sample.model_name,
        "model_version": sample.model_version, "stage": sample.stage,
        "created_at": as_utc(fb.created_at).isoformat(), "updated_at": as_utc(fb.updated_at).isoformat(),
        "updates": fb.updates,
    }


def wait_for_sample(store: Store, sample_id: str, wait_s: float) -> Sample | None:
    """The sample, waiting up to ``wait_s`` for a capture still on its way (a user can be faster
    than the logger)."""
    deadline = time.monotonic() + wait_s
    while True:
        sample = store.get_sample(sample_id)
        if sample is not None and sample.label is not None:
            return sample
        if time.monotonic() >= deadline:
            return sample
        time.sleep(0.1)


def record_feedback(store: Store, fb: dict[str, Any], wait_s: float = 0.0) -> tuple[dict[str, Any], bool]:
    """Store (or update in place) one feedback; ``(stored feedback JSON, created?)``."""
    sample_id = fb["inference_id"]
    sample = wait_for_sample(store, sample_id, wait_s)
    if sample is None:
        raise FeedbackError(404, f"no captured prediction has inference id {sample_id!r} (use the "
                                 "X-Inference-Id header of the prediction; a prediction that was not "
                                 "sampled for capture cannot get feedback)")
    if fb["correct"] and fb["correct_class"] and sample.label and fb["correct_class"] != sample.label:
        raise FeedbackError(400, f"correct is true but correct_class {fb['correct_class']!r} differs from "
                                 f"the prediction {sample.label!r}; send correct: false with the right class")
    now = utcnow()
    with store.write() as s:
        existing = s.get(Feedback, sample_id)
        created = existing is None
        if existing is None:
            row = Feedback(sample_id=sample_id, created_at=now, updates=0)
            s.add(row)
        else:
            row = existing
            row.updates += 1
        row.correct, row.correct_class, row.flag, row.updated_at = (
            fb["correct"], fb["correct_class"], fb["flag"], now)
        # A user's correction is a label (label_source=user); withdrawing it removes that label.
        label = s.query(Label).filter_by(sample_id=sample_id, label_source=USER).one_or_none()
        if fb["correct_class"] and not fb["correct"]:
            if label is None:
                s.add(Label(sample_id=sample_id, label_source=USER, label=fb["correct_class"],
                            labelled_by="user (feedback)", labelled_at=now))
            else:
                label.label, label.labelled_at = fb["correct_class"], now
        elif label is not None:
            s.delete(label)
        s.flush()
        result = feedback_json(sample, row)
    return result, created
