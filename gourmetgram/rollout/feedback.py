"""The canary analysis's feedback figures, from the loop store (``rollout analyze|auto --feedback``).

Per revision of the rollout: predictions captured since the canary's first one (so stable and
canary are compared over the same period, on the same mix of photos), how many got user
feedback and how many of those were marked correct. A sample belongs to a revision by its
``revision`` (the local gateway's ``ce-revision``); where the capture has no revision (KServe's
logger on the cluster) by the model version the revision serves, else by endpoint stage
(``canary`` for the canary, ``production`` for the stable revision).
"""

from __future__ import annotations

from gourmetgram.constants import CANARY, PRODUCTION
from gourmetgram.loop import quality
from gourmetgram.loop.store import Store
from gourmetgram.rollout.queries import FeedbackFigures
from gourmetgram.rollout.state import RolloutState


def _figures(rows: quality.RevisionCounts, match) -> FeedbackFigures:
    served = answers = correct = 0
    for key, (s, a, c) in rows.items():
        if match(*key):
            served, answers, correct = served + s, answers + a, correct + c
    return FeedbackFigures(served, answers, correct)


class StoreFeedback:
    """A :data:`gourmetgram.rollout.queries.FeedbackSource` reading the loop store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __call__(self, state: RolloutState) -> dict[str, FeedbackFigures]:
        versions = {r.get("name"): r.get("version") for r in state.revisions if r.get("name")}
        out: dict[str, FeedbackFigures] = {}
        with self.store.session() as s:
            since = None
            if state.canary:
                since = (quality.first_captured(s, revision=state.canary)
                         or quality.first_captured(s, stage=CANARY))
            rows = quality.feedback_by_revision(s, since)
        for name, stage in ((state.stable, PRODUCTION), (state.canary, CANARY)):
            if not name:
                continue
            figures = _figures(rows, lambda rev, _v, _s, name=name: rev == name)
            version = versions.get(name)
            if not figures.served and version:
                figures = _figures(rows, lambda rev, v, _s, version=version: rev is None and v == str(version))
            if not figures.served:
                figures = _figures(rows, lambda rev, _v, st, stage=stage: rev is None and st == stage)
            out[name] = figures
        return out
