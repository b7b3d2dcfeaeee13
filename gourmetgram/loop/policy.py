"""Which captured samples go to human labelling (``configs/loop.yaml``, section ``policy``).

In priority order, within a daily budget (UTC days), each sample at most once:

1. ``confirm``: a user's correction contradicts a confident prediction
   (``feedback.confirm_confidence``): it is no label until an annotator has labelled the
   sample (:mod:`gourmetgram.loop.labels`); always on, since nothing else would settle it;
2. ``wrong``: a user said the prediction is wrong;
3. ``flagged``: a user flagged the photo (not food / inappropriate);
4. ``out_of_distribution``: the model's answer said the photo is unlike its training data
   (``in_distribution`` false: the energy score above the bundle's threshold), so the labels
   tell what the new photos are (maybe not food at all);
5. ``low_confidence``: top-1 confidence below ``low_confidence`` (uncertainty sampling);
6. ``random``: a uniform random share of every capture, drawn once per sample from a hash
   of (seed, sample id), so asking again never tops it up: the unbiased sample that
   production accuracy is estimated on.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gourmetgram.loop.models import PENDING, USER, Feedback, Label, LabelTask, Sample
from gourmetgram.loop.settings import PolicySettings
from gourmetgram.loop.store import Store, utcnow

CONFIRM = "confirm"
REASONS = (CONFIRM, "wrong", "flagged", "out_of_distribution", "low_confidence", "random")


def random_draw(seed: int, sample_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def reason_for(sample: Sample, feedback: Feedback | None, policy: PolicySettings,
               review: str | None = None) -> str | None:
    """Why ``sample`` goes to labelling (``review``: that of the user's correction), or None."""
    if review == PENDING:
        return CONFIRM
    if feedback is not None and policy.wrong and not feedback.correct:
        return "wrong"
    if feedback is not None and policy.flagged and feedback.flag:
        return "flagged"
    if policy.out_of_distribution and sample.in_distribution is False:
        return "out_of_distribution"
    if sample.confidence is not None and sample.confidence < policy.low_confidence:
        return "low_confidence"
    if random_draw(policy.seed, sample.sample_id) < policy.random_share:
        return "random"
    return None


def pending(session: Session, policy: PolicySettings) -> list[tuple[str, str]]:
    """``[(sample_id, reason)]``: every complete sample not queued yet that the policy would
    queue, by priority (oldest first within a reason), budget aside: the labelling backlog
    still to be queued."""
    queued = select(LabelTask.sample_id)
    rows = session.execute(select(Sample, Feedback, Label.review)
                           .outerjoin(Feedback, Feedback.sample_id == Sample.sample_id)
                           .outerjoin(Label, (Label.sample_id == Sample.sample_id) & (Label.label_source == USER))
                           .where(Sample.object_key.is_not(None), Sample.label.is_not(None),
                                  Sample.sample_id.not_in(queued))
                           .order_by(Sample.captured_at, Sample.sample_id)).all()
    picked = [(sample.sample_id, r) for sample, fb, review in rows if (r := reason_for(sample, fb, policy, review))]
    picked.sort(key=lambda item: REASONS.index(item[1]))  # stable: oldest first within a reason
    return picked


def select_samples(store: Store, policy: PolicySettings, now: datetime | None = None) -> list[tuple[str, str]]:
    """``[(sample_id, reason)]`` to queue now: not queued before, by priority, within today's budget."""
    now = now or utcnow()
    with store.session() as s:
        used = s.scalar(select(func.count()).select_from(LabelTask).where(LabelTask.queue_day == now.date())) or 0
        left = max(0, policy.daily_budget - used)
        if left == 0:
            return []
        return pending(s, policy)[:left]


def queue_samples(store: Store, policy: PolicySettings, now: datetime | None = None) -> list[tuple[str, str]]:
    """Select and record the queue entries (committed); returns what was queued."""
    now = now or utcnow()
    chosen = select_samples(store, policy, now)
    with store.write() as s:
        for sample_id, reason in chosen:
            if s.get(LabelTask, sample_id) is None:
                s.add(LabelTask(sample_id=sample_id, reason=reason, queued_at=now, queue_day=now.date()))
    return chosen
