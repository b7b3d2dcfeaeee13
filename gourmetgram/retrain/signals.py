"""The policy's inputs from the loop store (SQLAlchemy: SQLite here, PostgreSQL on the cluster).

* labels: labelled production samples (an annotator's label or a user's correction), all
  time; the guard rail compares it with the count recorded when the last retrain started.
* production accuracy over a window: feedback answers (marked correct / wrong) on samples
  served by one stage, given (or last changed) within the window.
* feedback counts per stage, model version and outcome: what the receiver exports as
  ``loop_feedback_answers_total`` for the degradation recording rule.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from gourmetgram.loop.labels import is_ground_truth
from gourmetgram.loop.models import Feedback, Label, Sample
from gourmetgram.loop.store import Store, as_utc


class StoreSignals:
    def __init__(self, store: Store):
        self.store = store

    def labels_total(self) -> int:
        """Samples with a label that counts: a user's correction still waiting for an annotator
        (:func:`~gourmetgram.loop.labels.is_ground_truth`) is none yet, so it starts no retrain."""
        with self.store.session() as s:
            labelled = select(Label.sample_id).where(is_ground_truth()).distinct().subquery()
            return int(s.scalar(select(func.count()).select_from(labelled)) or 0)

    def feedback_window(self, stage: str, since: datetime) -> tuple[int, int]:
        since = as_utc(since)
        with self.store.session() as s:
            rows = s.execute(select(Feedback.correct, Feedback.updated_at)
                             .join(Sample, Sample.sample_id == Feedback.sample_id)
                             .where(Sample.stage == stage))
            # compared in Python: SQLite hands back naive datetimes (UTC by convention)
            answers = [bool(ok) for ok, at in rows if as_utc(at) >= since]
        return sum(answers), len(answers)

    def feedback_counts(self) -> dict[tuple[str, str, str], int]:
        with self.store.session() as s:
            rows = s.execute(select(Sample.stage, Sample.model_version, Feedback.correct, func.count())
                             .join(Sample, Sample.sample_id == Feedback.sample_id)
                             .group_by(Sample.stage, Sample.model_version, Feedback.correct))
            return {(stage or "unknown", version or "unknown", "correct" if ok else "wrong"): int(n)
                    for stage, version, ok, n in rows}
