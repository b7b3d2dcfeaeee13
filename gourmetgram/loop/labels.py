"""Labels and their review: a user's correction, an annotator's label, and how one settles the other.

A sample has at most one label per source (``annotator``, ``user``). Ground truth is the
annotator's label, else the user's correction, except that a correction which contradicted
a confident prediction is ``pending`` (:data:`~gourmetgram.loop.models.PENDING`) and is no
ground truth at all until an annotator has labelled the sample. The selection policy queues
such samples first (reason ``confirm``); whichever way the annotator's label arrives
(:func:`record_annotation`: ``loop sync`` from Label Studio, or any other caller), the pending
correction becomes ``confirmed`` (same class) or ``rejected``, by that annotator, at that time.

What a caller does to turn pending corrections into labels: queue them
(:func:`gourmetgram.loop.policy.queue_samples`, reason ``confirm``), have an annotator label the
queued samples (Label Studio, ``loop queue`` / ``loop sync``; or :func:`record_annotation`
directly), and export (:mod:`gourmetgram.loop.export`): the annotator's label is what is
exported, and the lineage says the user's correction was confirmed or rejected, and by whom.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gourmetgram.loop.models import ANNOTATOR, CONFIRMED, PENDING, REJECTED, USER, Label, Sample
from gourmetgram.loop.store import Store, utcnow


def _label(session: Session, sample_id: str, source: str) -> Label | None:
    return session.scalar(select(Label).where(Label.sample_id == sample_id, Label.label_source == source))


def settle_review(session: Session, sample_id: str) -> None:
    """Decide a reviewed user correction from the annotator's label, when there is one."""
    user, annotator = _label(session, sample_id, USER), _label(session, sample_id, ANNOTATOR)
    if user is None or user.review is None or annotator is None:
        return
    user.review = CONFIRMED if user.label == annotator.label else REJECTED
    user.reviewed_by, user.reviewed_at = annotator.labelled_by, annotator.labelled_at


def record_correction(session: Session, sample_id: str, label: str, by: str, at: datetime,
                      needs_review: bool) -> Label:
    """The user's correction as a label (created or replaced); ``needs_review``: it contradicts a
    confident prediction, so it stays pending until an annotator labels the sample."""
    row = _label(session, sample_id, USER)
    if row is None:
        row = Label(sample_id=sample_id, label_source=USER)
        session.add(row)
    row.label, row.labelled_by, row.labelled_at = label, by, at
    row.review, row.reviewed_by, row.reviewed_at = (PENDING if needs_review else None), None, None
    session.flush()
    settle_review(session, sample_id)  # an annotator may have labelled the sample already
    return row


def withdraw_correction(session: Session, sample_id: str) -> None:
    row = _label(session, sample_id, USER)
    if row is not None:
        session.delete(row)


def record_annotation(session: Session, sample_id: str, label: str, by: str, at: datetime | None = None,
                      external_id: str | None = None) -> str:
    """An annotator's label for a sample (the newest wins), settling a pending user correction.
    Returns ``created``, ``updated``, ``unchanged`` or ``unknown`` (no such sample)."""
    if session.get(Sample, sample_id) is None:
        return "unknown"
    at = at or utcnow()
    row = _label(session, sample_id, ANNOTATOR)
    if row is None:
        session.add(Label(sample_id=sample_id, label_source=ANNOTATOR, label=label, labelled_by=by,
                          labelled_at=at, external_id=external_id))
        outcome = "created"
    elif (row.label, row.external_id) != (label, external_id):
        row.label, row.labelled_by, row.labelled_at, row.external_id = label, by, at, external_id
        outcome = "updated"
    else:
        return "unchanged"
    session.flush()
    settle_review(session, sample_id)
    return outcome


def annotate(store: Store, sample_id: str, label: str, by: str, at: datetime | None = None) -> str:
    """:func:`record_annotation` in its own transaction (for callers without a session)."""
    with store.write() as s:
        return record_annotation(s, sample_id, label, by, at)


def pending_reviews(session: Session) -> list[Label]:
    """User corrections waiting for an annotator, oldest first."""
    return list(session.scalars(select(Label).where(Label.label_source == USER, Label.review == PENDING)
                                .order_by(Label.labelled_at, Label.sample_id)))


def is_ground_truth():
    """SQL condition: a label that counts (not a correction still waiting for an annotator)."""
    return Label.review.is_distinct_from(PENDING)


__all__ = ["settle_review", "record_correction", "withdraw_correction", "record_annotation", "annotate",
           "pending_reviews", "is_ground_truth"]
