"""The loop's metadata tables (SQLAlchemy 2 declarative). Changing them needs a migration in
``migrations/versions/`` (a test compares the models with the migrated schema)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Boolean, Date, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ANNOTATOR, USER = "annotator", "user"  # label_source values
LABEL_SOURCES = (ANNOTATOR, USER)
FLAGS = ("not_food", "inappropriate")
# Label.review of a user's correction that contradicts a confident prediction: pending until an
# annotator labels the sample, then confirmed (same class) or rejected (another class).
PENDING, CONFIRMED, REJECTED = "pending", "confirmed", "rejected"
REVIEWS = (PENDING, CONFIRMED, REJECTED)


class Base(DeclarativeBase):
    pass


class Sample(Base):
    """One captured prediction: an image (object key) and what the model said about it.

    ``sample_id`` is the inference id (the logger's ``ce-id``, the client's ``X-Inference-Id``)
    for the first image of a request, ``<id>/<k>`` for the k-th of a multi-image request. The
    request event fills the image half, the response event the prediction half, in either order.
    """

    __tablename__ = "samples"
    sample_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    inference_id: Mapped[str] = mapped_column(String(128), index=True)
    instance: Mapped[int] = mapped_column(Integer, default=0)
    object_key: Mapped[str | None] = mapped_column(String(300))
    content_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    content_type: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(128))
    class_index: Mapped[int | None] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Float)
    top_k: Mapped[list | None] = mapped_column(JSON)
    # The answer's out-of-distribution score (energy) and flag (gourmetgram.calibration)
    ood_score: Mapped[float | None] = mapped_column(Float)
    in_distribution: Mapped[bool | None] = mapped_column(Boolean)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64), index=True)
    revision: Mapped[str | None] = mapped_column(String(128))
    stage: Mapped[str | None] = mapped_column(String(32), index=True)
    inferenceservice: Mapped[str | None] = mapped_column(String(128))
    namespace: Mapped[str | None] = mapped_column(String(128))
    endpoint: Mapped[str | None] = mapped_column(String(32))
    requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    predicted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    captured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    @property
    def complete(self) -> bool:
        return self.object_key is not None and self.label is not None


class Feedback(Base):
    """What a user said about a prediction; repeated feedback updates this row in place."""

    __tablename__ = "feedback"
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.sample_id"), primary_key=True)
    correct: Mapped[bool] = mapped_column(Boolean)
    correct_class: Mapped[str | None] = mapped_column(String(128))
    flag: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updates: Mapped[int] = mapped_column(Integer, default=0)
    # Who sent it, pseudonymous (:func:`gourmetgram.loop.feedback.client_key`): the daily
    # correction cap counts by it, and a user's label names it.
    client: Mapped[str | None] = mapped_column(String(64), index=True)


class LabelTask(Base):
    """A sample queued for labelling (once), and where it went in Label Studio."""

    __tablename__ = "label_tasks"
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.sample_id"), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    queue_day: Mapped[date] = mapped_column(Date, index=True)
    ls_project_id: Mapped[int | None] = mapped_column(Integer)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, index=True)
    pushed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Label(Base):
    """A ground-truth label for a sample, from a human annotator or a user's correction.

    ``review`` is None for a label used as it is (an annotator's; a user's correction of an
    unconfident prediction). A user's correction that contradicts a confident prediction is
    ``pending`` (not ground truth, never exported) until an annotator labels the sample:
    then ``confirmed`` or ``rejected``, by ``reviewed_by`` at ``reviewed_at``.
    """

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("sample_id", "label_source", name="uq_labels_sample_source"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.sample_id"), index=True)
    label_source: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(128))
    labelled_by: Mapped[str | None] = mapped_column(String(256))
    labelled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    external_id: Mapped[str | None] = mapped_column(String(64))
    review: Mapped[str | None] = mapped_column(String(16), index=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(256))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ShadowPrediction(Base):
    """What a shadow revision answered for a mirrored request (never shown to the user).

    Keyed like the production sample it mirrors (``sample_id``: the inference id, ``/<k>``
    for the k-th image) plus the shadow revision, so the two answers to the same request
    join on ``sample_id``. No foreign key: the shadow's answer may arrive before the
    production sample exists (or for a request the production capture sampled out).
    """

    __tablename__ = "shadow_predictions"
    sample_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    revision: Mapped[str] = mapped_column(String(128), primary_key=True)
    inference_id: Mapped[str] = mapped_column(String(128), index=True)
    instance: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str | None] = mapped_column(String(128))
    class_index: Mapped[int | None] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Float)
    top_k: Mapped[list | None] = mapped_column(JSON)
    model_version: Mapped[str | None] = mapped_column(String(64))
    predicted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    captured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
