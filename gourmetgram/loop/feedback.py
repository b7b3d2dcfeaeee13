"""User feedback by inference id: validation and the idempotent write (the feedback API's core).

Contract (kept stable for the web app): ``POST /v1/feedback`` with JSON
``{"inference_id": str, "correct": bool, "correct_class": str (optional), "flag":
"not_food"|"inappropriate" (optional)}`` -> 200 with the stored feedback; unknown inference
id -> 404; unknown class -> 400 naming the valid ones; repeated feedback updates in place;
malformed or oversized -> 4xx; not ``Content-Type: application/json`` -> 415.

Feedback is a way into the training data (a correction is a label), so:

* JSON only: a cross-site page can send ``text/plain`` or a form without a CORS preflight,
  but not ``application/json`` (415 for anything else, before the body is read);
* a correction that contradicts a confident prediction (top-1 confidence at least
  ``feedback.confirm_confidence``) is kept as a *pending* user label: not ground truth, never
  exported, until an annotator labels the sample (policy reason ``confirm``;
  :mod:`gourmetgram.loop.labels`);
* one client may send at most ``feedback.daily_corrections_per_client`` corrections per UTC
  day (429 beyond). The client (:func:`client_key`) is the ``X-Client-Id`` header of a
  caller allowed to name its users (``feedback.client_id_from``: the web app), else the
  caller's address; it is stored pseudonymously (a hash) and names the user's label.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
from datetime import datetime, timedelta
from typing import Any, Sequence

from sqlalchemy import func, select

from gourmetgram.constants import CLIENT_ID_HEADER
from gourmetgram.errors import BadInput
from gourmetgram.loop import labels
from gourmetgram.loop.feedback_media import media_type_problem
from gourmetgram.loop.models import FLAGS, PENDING, Feedback, Label, Sample
from gourmetgram.loop.settings import FeedbackSettings
from gourmetgram.loop.store import Store, as_utc, utcnow

FIELDS = ("inference_id", "correct", "correct_class", "flag")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# label_status in the answer: what a correction is for training
NO_CORRECTION, LABEL, PENDING_REVIEW = "none", "label", "pending_review"


class FeedbackError(BadInput):
    """A feedback request that cannot be stored; ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after_s = status, retry_after_s


def check_content_type(value: str | None) -> None:
    """415 unless the request says ``application/json`` (:mod:`gourmetgram.loop.feedback_media`)."""
    problem = media_type_problem(value)
    if problem:
        raise FeedbackError(415, problem)


def _in_networks(address: str | None, networks: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def client_key(address: str | None, client_id: str | None, trusted: Sequence[str]) -> str:
    """Who a feedback comes from, pseudonymous: a hash of the ``X-Client-Id`` a trusted caller
    sent (``trusted``: ``feedback.client_id_from``), else of the caller's address. An untrusted
    caller's header is ignored (anyone could send a new one with every request)."""
    if client_id is not None and _in_networks(address, trusted):
        if not CLIENT_ID_RE.fullmatch(client_id):
            raise FeedbackError(400, f"{CLIENT_ID_HEADER} must be 1 to 128 letters, digits or '.', '_', ':', '-'")
        identity = f"id:{client_id}"
    else:
        identity = f"address:{address or 'unknown'}"
    return "c-" + hashlib.sha256(identity.encode()).hexdigest()[:24]


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


def feedback_json(sample: Sample, fb: Feedback, label: Label | None = None) -> dict[str, Any]:
    """The stored feedback; ``label_status``: ``none`` (no correction), ``label`` (the
    correction is a training label), ``pending_review`` (it waits for an annotator),
    ``confirmed`` or ``rejected`` (an annotator agreed or disagreed)."""
    if label is None:
        status = NO_CORRECTION
    elif label.review is None:
        status = LABEL
    else:
        status = PENDING_REVIEW if label.review == PENDING else label.review
    return {
        "inference_id": fb.sample_id, "correct": fb.correct, "correct_class": fb.correct_class,
        "flag": fb.flag, "predicted_label": sample.label, "model_name": sample.model_name,
        "model_version": sample.model_version, "stage": sample.stage,
        "created_at": as_utc(fb.created_at).isoformat(), "updated_at": as_utc(fb.updated_at).isoformat(),
        "updates": fb.updates, "label_status": status,
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


def corrections_today(session, client: str, now: datetime, except_sample: str | None = None) -> int:
    """Corrections (marked wrong with the right class) ``client`` sent or changed this UTC day."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    stmt = (select(func.count()).select_from(Feedback)
            .where(Feedback.client == client, Feedback.correct.is_(False), Feedback.correct_class.is_not(None),
                   Feedback.updated_at >= day_start))
    if except_sample is not None:
        stmt = stmt.where(Feedback.sample_id != except_sample)
    return session.scalar(stmt) or 0


def record_feedback(store: Store, fb: dict[str, Any], wait_s: float = 0.0, client: str | None = None,
                    settings: FeedbackSettings = FeedbackSettings()) -> tuple[dict[str, Any], bool]:
    """Store (or update in place) one feedback; ``(stored feedback JSON, created?)``.

    ``client``: who sent it (:func:`client_key`; None for in-process callers: no cap). A
    correction beyond the client's daily cap is refused (429) and nothing is stored.
    """
    sample_id = fb["inference_id"]
    sample = wait_for_sample(store, sample_id, wait_s)
    if sample is None:
        raise FeedbackError(404, f"no captured prediction has inference id {sample_id!r} (use the "
                                 "X-Inference-Id header of the prediction; a prediction that was not "
                                 "sampled for capture cannot get feedback)")
    if fb["correct"] and fb["correct_class"] and sample.label and fb["correct_class"] != sample.label:
        raise FeedbackError(400, f"correct is true but correct_class {fb['correct_class']!r} differs from "
                                 f"the prediction {sample.label!r}; send correct: false with the right class")
    correction = bool(fb["correct_class"]) and not fb["correct"]
    now = utcnow()
    with store.write() as s:
        cap = settings.daily_corrections_per_client
        if correction and client is not None:
            sent = corrections_today(s, client, now, except_sample=sample_id)
            if sent >= cap:
                tomorrow = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
                raise FeedbackError(429, f"this client has sent {sent} correction(s) today; one client may send "
                                         f"{cap} a day (feedback.daily_corrections_per_client). Nothing was "
                                         "stored; send it again tomorrow (UTC)",
                                    retry_after_s=int((tomorrow - now).total_seconds()) + 1)
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
        row.client = client
        # A user's correction is a label (label_source=user), pending an annotator's review when
        # it contradicts a confident prediction; withdrawing it removes that label.
        if correction:
            confident = sample.confidence is not None and sample.confidence >= settings.confirm_confidence
            label = labels.record_correction(s, sample_id, fb["correct_class"], by=f"user {client or '(feedback)'}",
                                             at=now, needs_review=confident)
        else:
            labels.withdraw_correction(s, sample_id)
            label = None
        s.flush()
        result = feedback_json(sample, row, label)
    return result, created


__all__ = ["FeedbackError", "check_content_type", "client_key", "parse_feedback", "record_feedback",
           "feedback_json", "corrections_today", "CLIENT_ID_HEADER"]
