"""Counts and production accuracy from the metadata store (``loop status``, the sink's /metrics).

Production accuracy per model version, two ways (SageMaker Model Monitor's model-quality
merge, by inference id):

* ``feedback``: the share of predictions users marked correct, among those with feedback
  (biased: people answer more when something is wrong, and only some answer);
* ``labels``: the share whose ground truth (a human annotator's label, else a user's
  correction) equals the prediction, among labelled samples. Over the policy's uniform
  random share this is the unbiased estimate; over all labelled samples it over-weights the
  low-confidence and disputed ones, so both are reported.

Calibration per model version the same two ways: the expected calibration error of the served
(temperature-scaled) confidence against those labels (:func:`calibration_by_version`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import datetime, timezone

from sqlalchemy import func, select

from gourmetgram.calibration import expected_calibration_error
from gourmetgram.loop.labels import is_ground_truth
from gourmetgram.loop.models import ANNOTATOR, PENDING, USER, Feedback, Label, LabelTask, Sample

RANDOM_REASON = "random"


@dataclasses.dataclass
class Accuracy:
    correct: int = 0
    total: int = 0

    @property
    def value(self) -> float | None:
        return self.correct / self.total if self.total else None

    def add(self, ok: bool) -> None:
        self.total += 1
        self.correct += int(ok)


def feedback_kinds(fb: Feedback) -> list[str]:
    kinds = ["correct" if fb.correct else "wrong"]
    if fb.flag:
        kinds.append(fb.flag)
    if fb.correct_class:
        kinds.append("corrected")
    return kinds


def feedback_counts(session) -> dict[tuple[str, str], int]:
    """``{(model_version, kind): n}`` with kind correct|wrong|corrected|not_food|inappropriate."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    rows = session.execute(select(Sample.model_version, Feedback).join(Feedback, Feedback.sample_id == Sample.sample_id))
    for version, fb in rows:
        for kind in feedback_kinds(fb):
            counts[(version or "unknown", kind)] += 1
    return dict(counts)


def ground_truth(session) -> dict[str, tuple[str, str]]:
    """``{sample_id: (label, label_source)}``: an annotator's label wins over a user's correction;
    a correction still waiting for an annotator's review is none."""
    truth: dict[str, tuple[str, str]] = {}
    for sample_id, label, source in session.execute(select(Label.sample_id, Label.label, Label.label_source)
                                                    .where(is_ground_truth())):
        if source == ANNOTATOR or sample_id not in truth:
            truth[sample_id] = (label, source)
    return truth


def production_accuracy(session) -> dict[str, dict[str, Accuracy]]:
    """``{model_version: {"feedback": Accuracy, "labels": Accuracy, "labels_random": Accuracy}}``."""
    out: dict[str, dict[str, Accuracy]] = defaultdict(lambda: {k: Accuracy() for k in
                                                               ("feedback", "labels", "labels_random")})
    for version, fb in session.execute(select(Sample.model_version, Feedback)
                                       .join(Feedback, Feedback.sample_id == Sample.sample_id)):
        out[version or "unknown"]["feedback"].add(bool(fb.correct))
    truth = ground_truth(session)
    if truth:
        reasons = dict(session.execute(select(LabelTask.sample_id, LabelTask.reason)).all())
        rows = session.execute(select(Sample.sample_id, Sample.model_version, Sample.label)
                               .where(Sample.sample_id.in_(list(truth))))
        for sample_id, version, predicted in rows:
            if predicted is None:
                continue
            ok = truth[sample_id][0] == predicted
            out[version or "unknown"]["labels"].add(ok)
            if reasons.get(sample_id) == RANDOM_REASON:
                out[version or "unknown"]["labels_random"].add(ok)
    return dict(out)


@dataclasses.dataclass(frozen=True)
class CalibrationError:
    ece: float
    n: int


def calibration_by_version(session) -> dict[str, dict[str, CalibrationError]]:
    """``{model_version: {"labels": .., "labels_random": ..}}``: the ECE (15 bins) of the served
    confidence on labelled samples (all of them; the policy's random share). Few samples bias
    ECE upwards: ``n`` goes with it."""
    truth = ground_truth(session)
    if not truth:
        return {}
    reasons = dict(session.execute(select(LabelTask.sample_id, LabelTask.reason)).all())
    rows = session.execute(select(Sample.sample_id, Sample.model_version, Sample.label, Sample.confidence)
                           .where(Sample.sample_id.in_(list(truth)), Sample.confidence.is_not(None)))
    points: dict[str, dict[str, list[tuple[float, bool]]]] = defaultdict(lambda: {"labels": [], "labels_random": []})
    for sample_id, version, predicted, confidence in rows:
        if predicted is None:
            continue
        point = (float(confidence), truth[sample_id][0] == predicted)
        points[version or "unknown"]["labels"].append(point)
        if reasons.get(sample_id) == RANDOM_REASON:
            points[version or "unknown"]["labels_random"].append(point)
    out: dict[str, dict[str, CalibrationError]] = {}
    for version, by_source in points.items():
        for source, pairs in by_source.items():
            if pairs:
                confidence, correct = zip(*pairs)
                out.setdefault(version, {})[source] = CalibrationError(
                    expected_calibration_error(list(confidence), list(correct)), len(pairs))
    return out


def captured_counts(session) -> dict[tuple[str, str, str], int]:
    """``{(stage, model_version, predicted class): n}`` complete captured samples, all time (the
    Data dashboard takes the daily increase; "predicted" because most samples have no label)."""
    complete = (Sample.object_key.is_not(None)) & (Sample.label.is_not(None))
    rows = session.execute(select(Sample.stage, Sample.model_version, Sample.label, func.count())
                           .where(complete).group_by(Sample.stage, Sample.model_version, Sample.label))
    return {(stage or "unknown", version or "unknown", label): int(n) for stage, version, label, n in rows}


def label_counts(session) -> dict[tuple[str, str], int]:
    """``{(label_source, class): n}`` labels by where they came from (annotator | user); a user's
    correction waiting for review is not a label yet."""
    rows = session.execute(select(Label.label_source, Label.label, func.count()).where(is_ground_truth())
                           .group_by(Label.label_source, Label.label))
    return {(source, label): int(n) for source, label, n in rows}


def labelling_backlog(session) -> dict[str, int]:
    """Queued samples without a label yet: ``waiting`` (not pushed to Label Studio yet) and
    ``in_label_studio`` (pushed, not annotated). Both keys always present."""
    labelled = select(Label.sample_id).where(is_ground_truth()).distinct()
    rows = session.execute(select(LabelTask.ls_task_id.is_not(None), func.count())
                           .where(LabelTask.sample_id.not_in(labelled))
                           .group_by(LabelTask.ls_task_id.is_not(None)))
    out = {"waiting": 0, "in_label_studio": 0}
    for pushed, n in rows:
        out["in_label_studio" if pushed else "waiting"] += int(n)
    return out


def status(session) -> dict:
    """What ``gourmetgram loop status`` prints."""
    def count(stmt) -> int:
        return session.scalar(stmt) or 0

    complete = (Sample.object_key.is_not(None)) & (Sample.label.is_not(None))
    labelled_ids = select(Label.sample_id).where(is_ground_truth()).distinct()
    return {
        "captured": count(select(func.count()).select_from(Sample).where(complete)),
        "partial": count(select(func.count()).select_from(Sample).where(~complete)),
        "with_feedback": count(select(func.count()).select_from(Feedback)),
        "queued": count(select(func.count()).select_from(LabelTask)),
        "pushed": count(select(func.count()).select_from(LabelTask).where(LabelTask.ls_task_id.is_not(None))),
        "labelled": count(select(func.count()).select_from(labelled_ids.subquery())),
        "labelled_by_annotator": count(select(func.count()).select_from(Label).where(Label.label_source == ANNOTATOR)),
        "corrected_by_user": count(select(func.count()).select_from(Label).where(Label.label_source == USER,
                                                                                 is_ground_truth())),
        "corrections_pending_review": count(select(func.count()).select_from(Label)
                                            .where(Label.label_source == USER, Label.review == PENDING)),
        "by_stage": dict(session.execute(select(Sample.stage, func.count()).where(complete)
                                         .group_by(Sample.stage)).all()),
        "queued_by_reason": dict(session.execute(select(LabelTask.reason, func.count())
                                                 .group_by(LabelTask.reason)).all()),
        "accuracy": {v: {k: {"value": a.value, "correct": a.correct, "n": a.total} for k, a in d.items()}
                     for v, d in production_accuracy(session).items()},
        "feedback": {f"{v}/{k}": n for (v, k), n in sorted(feedback_counts(session).items())},
    }


# (revision, model_version, stage) -> [served, answers, correct]
RevisionCounts = dict[tuple[str | None, str | None, str | None], list[int]]


def feedback_by_revision(session, since: datetime | None = None) -> RevisionCounts:
    """Served predictions and their feedback per (revision, model version, stage), for samples
    captured at or after ``since``: what the canary analysis compares (canary vs stable)."""
    complete = (Sample.object_key.is_not(None)) & (Sample.label.is_not(None))
    stmt = (select(Sample.revision, Sample.model_version, Sample.stage, Feedback.correct)
            .outerjoin(Feedback, Feedback.sample_id == Sample.sample_id).where(complete))
    if since is not None:
        stmt = stmt.where(Sample.captured_at >= since)
    out: RevisionCounts = defaultdict(lambda: [0, 0, 0])
    for revision, version, stage, correct in session.execute(stmt):
        row = out[(revision, version, stage)]
        row[0] += 1
        if correct is not None:
            row[1] += 1
            row[2] += int(bool(correct))
    return dict(out)


def first_captured(session, revision: str | None = None, stage: str | None = None) -> datetime | None:
    """When the first sample of ``revision`` (or of ``stage``) was captured (UTC)."""
    stmt = select(func.min(Sample.captured_at))
    if revision is not None:
        stmt = stmt.where(Sample.revision == revision)
    if stage is not None:
        stmt = stmt.where(Sample.stage == stage)
    value = session.scalar(stmt)
    return None if value is None else (value if value.tzinfo else value.replace(tzinfo=timezone.utc))


# The business metric (docs/business-metric.md quotes this text; a test keeps them equal): the
# tag keep rate of the photos captured in [since, until), per stage and model version. A tag
# is "changed" when its user marked it wrong (with or without the right class); a photo nobody
# answered about keeps its tag (the product applies the suggested tag unless the user acts).
# Portable SQL: the same text runs on SQLite locally and PostgreSQL on the cluster (the test runs it on both).
TAG_KEEP_RATE_SQL = """\
SELECT s.stage,
       s.model_version,
       COUNT(*) AS tagged,
       SUM(CASE WHEN f.sample_id IS NULL THEN 0 ELSE 1 END) AS answered,
       SUM(CASE WHEN f.sample_id IS NULL OR f.correct THEN 0 ELSE 1 END) AS changed,
       1.0 - SUM(CASE WHEN f.sample_id IS NULL OR f.correct THEN 0 ELSE 1 END) * 1.0 / COUNT(*)
         AS tag_keep_rate
FROM samples AS s
LEFT JOIN feedback AS f ON f.sample_id = s.sample_id
WHERE s.object_key IS NOT NULL AND s.label IS NOT NULL
  AND s.captured_at >= :since AND s.captured_at < :until
GROUP BY s.stage, s.model_version
ORDER BY s.stage, s.model_version
"""


@dataclasses.dataclass(frozen=True)
class TagKeepRate:
    stage: str | None
    model_version: str | None
    tagged: int
    answered: int
    changed: int
    tag_keep_rate: float


def tag_keep_rate(session, since: datetime, until: datetime) -> list[TagKeepRate]:
    """:data:`TAG_KEEP_RATE_SQL` over the photos captured in ``[since, until)``."""
    from sqlalchemy import DateTime, bindparam, text

    # bound with the column's type, so SQLite compares the same text format the rows hold
    stmt = text(TAG_KEEP_RATE_SQL).bindparams(bindparam("since", type_=DateTime(timezone=True)),
                                              bindparam("until", type_=DateTime(timezone=True)))
    rows = session.execute(stmt, {"since": since.astimezone(timezone.utc), "until": until.astimezone(timezone.utc)})
    return [TagKeepRate(stage, version, int(tagged), int(answered), int(changed), float(rate))
            for stage, version, tagged, answered, changed, rate in rows]
def summary(session, policy) -> dict:
    """The loop's read-only summary for dashboards and the web app's operator page (the capture
    sink's ``GET /summary``): production accuracy per model version and the labelling backlog.

    ``backlog``: samples waiting for a person. ``to_queue``: captured samples the selection
    policy (``policy``, :class:`gourmetgram.loop.settings.PolicySettings`) would queue and
    ``loop queue`` has not queued yet, by reason (the daily budget aside); ``queued``: queued
    and not yet labelled by an annotator (``in_label_studio`` of them pushed); ``total`` both.
    Counts only: no image, no id, no database address.
    """
    from gourmetgram.loop.policy import REASONS, pending

    def count(stmt) -> int:
        return session.scalar(stmt) or 0

    kinds: dict[str, dict[str, int]] = defaultdict(dict)
    for (version, kind), n in feedback_counts(session).items():
        kinds[version][kind] = n
    versions = []
    calibration = calibration_by_version(session)
    for version, by_source in sorted(production_accuracy(session).items(), key=lambda kv: _version_key(kv[0])):
        row: dict = {"model_version": version}
        for source, a in by_source.items():
            row[source] = {"value": a.value, "correct": a.correct, "n": a.total}
        row["kinds"] = kinds.get(version, {})
        row["ece"] = {source: {"value": e.ece, "n": e.n} for source, e in calibration.get(version, {}).items()}
        versions.append(row)
    to_queue: dict[str, int] = {reason: 0 for reason in REASONS}
    for _sample_id, reason in pending(session, policy):
        to_queue[reason] += 1
    queued = labelling_backlog(session)  # the same numbers as the gourmetgram_labelling_backlog gauge
    return {
        "accuracy_by_version": versions,
        "backlog": {
            "total": sum(to_queue.values()) + sum(queued.values()),
            "to_queue": sum(to_queue.values()),
            "to_queue_by_reason": to_queue,
            "queued": sum(queued.values()),
            "waiting": queued["waiting"],
            "in_label_studio": queued["in_label_studio"],
        },
        "captured": count(select(func.count()).select_from(Sample)
                          .where(Sample.object_key.is_not(None), Sample.label.is_not(None))),
        "with_feedback": count(select(func.count()).select_from(Feedback)),
    }


def _version_key(version: str) -> tuple:
    """Registry versions are numbers: 2 before 10; anything else ("unknown") after them."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
