"""``loop export``: labelled production samples as a dataset in the Food-11 layout, with lineage.

* Ground truth per sample: a human annotator's label, else a user's correction
  (:func:`gourmetgram.loop.quality.ground_truth`); a correction that contradicted a confident
  prediction and that no annotator has reviewed yet is left out. The source is kept in the
  lineage, and whether a person confirmed the label: ``confirmed``/``confirmed_by`` (the
  annotator), and the user's correction with its review (``confirmed``/``rejected``).
* One image, one file: samples with the same content hash are written once (the newest
  label wins; disagreements are reported).
* Splits by content hash (``export.evaluation_share``/``validation_share``), so the same image
  can never be in training and in evaluation. Then a production evaluation set large enough for
  the differential gate's paired test to have power is reserved (``export.min_evaluation_images``,
  taken from training, at most ``export.max_evaluation_share`` of the images); when the labels
  cannot fill it the report says so and how many more labels would. With ``--base DATASET`` the production samples
  are added to a copy of that dataset, and an image the base already has stays in the base's
  split (no leakage across the merge either).
* ``lineage.json`` at the root: for every production file, the sample/inference id, label,
  label source, who and when, who confirmed it, the user's correction and its review, the
  model name/version/revision/stage that served it, its prediction and confidence, and the
  content hash; plus the base dataset and its fingerprint, and the counts by confirmation.

The result passes :func:`gourmetgram.data.layout.validate_dataset` or the export fails with
the reason (a class with too few labelled images for every split: add ``--base``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from sqlalchemy import select

from gourmetgram.constants import CLASS_NAMES_FILE, SPLITS
from gourmetgram.errors import BadInput
from gourmetgram.loop import quality
from gourmetgram.loop.labels import pending_reviews
from gourmetgram.loop.models import ANNOTATOR, CONFIRMED, REJECTED, USER, Label, Sample
from gourmetgram.loop.settings import ExportSettings
from gourmetgram.loop.store import Store, as_utc, utcnow
from gourmetgram.objectstore import ObjectStore

LINEAGE_FILE = "lineage.json"
TRAINING, VALIDATION, EVALUATION = SPLITS


class ExportError(BadInput):
    """The labelled data cannot make a valid dataset (the message says what is missing)."""


def split_of(sha256: str, shares: ExportSettings) -> str:
    """Deterministic split from the content hash alone."""
    x = int(sha256[:12], 16) / 16**12
    if x < shares.evaluation_share:
        return EVALUATION
    if x < shares.evaluation_share + shares.validation_share:
        return VALIDATION
    return TRAINING


def reserve_evaluation(assigned: dict[str, str], labels: dict[str, str], shares: ExportSettings,
                       keep_training_per_class: bool) -> set[str]:
    """Move images from training to evaluation (in place) until the evaluation split holds
    ``shares.min_evaluation_images``, or ``shares.max_evaluation_share`` of the images, whichever
    is fewer: a production evaluation set the differential gate's paired test has power on.
    Taken in hash order (deterministic, unrelated to content); with ``keep_training_per_class``
    a class's last training image stays. Returns the hashes moved."""
    target = min(shares.min_evaluation_images, math.floor(shares.max_evaluation_share * len(assigned)))
    have = sum(split == EVALUATION for split in assigned.values())
    in_training: dict[str, int] = defaultdict(int)
    for sha, split in assigned.items():
        in_training[labels[sha]] += split == TRAINING
    moved: set[str] = set()
    for sha in sorted(assigned):
        if have >= target:
            break
        if assigned[sha] != TRAINING or (keep_training_per_class and in_training[labels[sha]] <= 1):
            continue
        assigned[sha] = EVALUATION
        in_training[labels[sha]] -= 1
        moved.add(sha)
        have += 1
    return moved


def evaluation_note(n_evaluation: int, n_images: int, shares: ExportSettings) -> str:
    """Empty when the production evaluation set is large enough for the differential gate's
    improvement test, else what is missing and how many more labels would fill it."""
    if n_evaluation >= shares.min_evaluation_images:
        return ""
    needed = math.ceil(shares.min_evaluation_images / shares.max_evaluation_share)
    return (f"the production evaluation set has {n_evaluation} image(s), fewer than the "
            f"{shares.min_evaluation_images} the differential gate's improvement test needs to have power "
            f"(export.min_evaluation_images; at most {shares.max_evaluation_share:.0%} of the {n_images} new labelled "
            f"image(s) are reserved for it): the retrain will be judged for non-inferiority there, not for an "
            f"improvement; label about {max(1, needed - n_images)} more production sample(s)")


def assign_splits(labels: dict[str, str], shares: ExportSettings, fill: bool = True) -> tuple[dict[str, str], set[str]]:
    """``{sha: split}`` by hash; with ``fill``, a class missing from a split takes one image from
    the split where that class has most (each image still in exactly one split: no leakage).
    Returns the assignment and the hashes that were moved."""
    assigned = {sha: split_of(sha, shares) for sha in labels}
    moved: set[str] = set()
    if not fill:
        return assigned, moved
    by_class: dict[str, list[str]] = defaultdict(list)
    for sha in sorted(labels):
        by_class[labels[sha]].append(sha)
    for _label, hashes in sorted(by_class.items()):
        for split in (EVALUATION, VALIDATION, TRAINING):
            members = defaultdict(list)
            for sha in hashes:
                members[assigned[sha]].append(sha)
            if members[split]:
                continue
            donor = max(SPLITS, key=lambda s: len(members[s]))
            if len(members[donor]) < 2:
                continue  # too few images of this class: reported as empty below
            sha = members[donor][0]
            assigned[sha] = split
            moved.add(sha)
    return assigned, moved


@dataclasses.dataclass
class ExportReport:
    root: Path
    files: int
    per_split: dict[str, int]
    conflicts: list[str]
    skipped_in_base: int
    base: str | None
    labels: dict[str, int] = dataclasses.field(default_factory=dict)  # exported files by label source
    reserved: int = 0  # moved from training to evaluation for the differential gate's power
    evaluation_note: str = ""  # set when the production evaluation set is too small for that (why)

    def summary(self) -> str:
        parts = ", ".join(f"{s} {n}" for s, n in self.per_split.items())
        extra = f"; added to a copy of {self.base}" if self.base else ""
        reserved = f"; {self.reserved} reserved for evaluation" if self.reserved else ""
        note = f"\nWARNING: {self.evaluation_note}" if self.evaluation_note else ""
        return f"{self.files} production image(s) ({parts}){reserved}{extra}{note}"


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_base(base: Path, out: Path) -> dict[str, str]:
    """Copy (hard-link where possible) the base dataset; ``{content sha: split}`` of its images."""
    from gourmetgram.data.layout import validate_dataset

    validate_dataset(base, check_images=False, progress=False)
    where: dict[str, str] = {}
    for split in SPLITS:
        for src in sorted((base / split).rglob("*")):
            if not src.is_file():
                continue
            dst = out / src.relative_to(base)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            where.setdefault(_file_sha(src), split)
    return where


def _as_jpg_or_png(data: bytes, content_type: str | None) -> tuple[bytes, str]:
    if content_type == "image/jpeg":
        return data, "jpg"
    if content_type == "image/png":
        return data, "png"
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "PNG")
    return out.getvalue(), "png"


def export_dataset(store: Store, objects: ObjectStore, out: str | Path, class_names: Sequence[str],
                   shares: ExportSettings, base: str | Path | None = None,
                   overwrite: bool = False) -> ExportReport:
    from gourmetgram.classes import read_class_names
    from gourmetgram.data.layout import validate_dataset

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise BadInput(f"{out} exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    class_names = list(class_names)
    base_path = Path(base) if base else None
    if base_path is not None:
        base_names = read_class_names(base_path, len([d for d in (base_path / TRAINING).glob("class_*")]))
        if list(base_names) != class_names:
            raise BadInput(f"the base dataset's classes {list(base_names)} differ from the model's {class_names}")

    with store.session() as s:
        truth = quality.ground_truth(s)
        labels = {(x.sample_id, x.label_source): x for x in s.scalars(select(Label))}
        samples = {x.sample_id: x for x in s.scalars(select(Sample).where(Sample.sample_id.in_(list(truth))))}
        waiting_for_review = len(pending_reviews(s))

    # one image, one label: the newest label for each content hash
    by_hash: dict[str, list[tuple[Sample, str, str]]] = defaultdict(list)
    for sid, (label, source) in truth.items():
        sample = samples.get(sid)
        if sample is None or sample.object_key is None or sample.content_sha256 is None or label not in class_names:
            continue
        by_hash[sample.content_sha256].append((sample, label, source))
    conflicts = []
    chosen: dict[str, tuple[Sample, str, str]] = {}
    for sha, items in by_hash.items():
        items.sort(key=lambda it: as_utc(labels[(it[0].sample_id, it[2])].labelled_at).timestamp())
        if len({label for _, label, _ in items}) > 1:
            conflicts.append(f"{sha[:12]}: {sorted({label for _, label, _ in items})} (kept {items[-1][1]!r})")
        chosen[sha] = items[-1]

    out.mkdir(parents=True, exist_ok=True)
    base_split = _copy_base(base_path, out) if base_path is not None else {}
    (out / CLASS_NAMES_FILE).write_text("\n".join(class_names) + "\n")
    lineage, per_split = [], {s: 0 for s in SPLITS}
    confirmation = {"confirmed_by_annotator": 0, "unconfirmed_user_corrections": 0, "user_corrections_confirmed": 0,
                    "user_corrections_rejected": 0,
                    "user_corrections_waiting_for_review": waiting_for_review}  # left out until an annotator looks
    fresh = {sha: item for sha, item in chosen.items() if sha not in base_split}
    skipped = len(chosen) - len(fresh)  # the base already has these very images (in its own split)
    fresh_labels = {sha: item[1] for sha, item in fresh.items()}
    assigned, moved = assign_splits(fresh_labels, shares, fill=base_path is None)
    reserved = reserve_evaluation(assigned, fresh_labels, shares, keep_training_per_class=base_path is None)
    for sha in sorted(fresh):
        sample, label, source = fresh[sha]
        split = assigned[sha]
        assert sample.object_key is not None
        data, ext = _as_jpg_or_png(objects.get(sample.object_key), sample.content_type)
        rel = Path(split) / f"class_{class_names.index(label):02d}" / f"prod_{sha[:16]}.{ext}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        per_split[split] += 1
        lab = labels[(sample.sample_id, source)]
        user = labels.get((sample.sample_id, USER))
        confirmation["confirmed_by_annotator" if source == ANNOTATOR else "unconfirmed_user_corrections"] += 1
        if user is not None and user.review in (CONFIRMED, REJECTED):
            confirmation[f"user_corrections_{user.review}"] += 1
        lineage.append({
            "file": str(rel), "content_sha256": sha, "split": split, "rebalanced": sha in moved,
            "reserved_for_evaluation": sha in reserved,
            "label": label,
            "label_source": source, "labelled_by": lab.labelled_by,
            "labelled_at": as_utc(lab.labelled_at).isoformat(),
            # a person checked this label: an annotator's label is its own confirmation; a user's
            # correction used as it is (it did not contradict a confident prediction) is not
            "confirmed": source == ANNOTATOR,
            "confirmed_by": lab.labelled_by if source == ANNOTATOR else None,
            "confirmed_at": as_utc(lab.labelled_at).isoformat() if source == ANNOTATOR else None,
            "user_correction": None if user is None else {
                "label": user.label, "by": user.labelled_by, "at": as_utc(user.labelled_at).isoformat(),
                "review": user.review, "reviewed_by": user.reviewed_by,
                "reviewed_at": None if user.reviewed_at is None else as_utc(user.reviewed_at).isoformat()},
            "sample_id": sample.sample_id,
            "inference_id": sample.inference_id, "object_key": sample.object_key,
            "model_name": sample.model_name, "model_version": sample.model_version,
            "revision": sample.revision, "stage": sample.stage, "predicted": sample.label,
            "confidence": sample.confidence, "captured_at": as_utc(sample.captured_at).isoformat(),
        })
    for split in SPLITS:
        for i in range(len(class_names)):
            (out / split / f"class_{i:02d}").mkdir(parents=True, exist_ok=True)
    empty = [f"{split}/class_{i:02d} ({class_names[i]})" for split in SPLITS for i in range(len(class_names))
             if not any((out / split / f"class_{i:02d}").iterdir())]
    if empty:
        raise ExportError(f"{len(empty)} split/class folder(s) would be empty: {', '.join(empty[:8])}"
                          f"{' ...' if len(empty) > 8 else ''}; label more samples of those classes, or add "
                          "the production samples to an existing dataset with --base DATASET")
    (out / LINEAGE_FILE).write_text(json.dumps({
        "created_at": utcnow().isoformat(), "class_names": class_names,
        "splits": {"by": "sha256 of the image bytes", "evaluation_share": shares.evaluation_share,
                   "validation_share": shares.validation_share,
                   "min_evaluation_images": shares.min_evaluation_images,
                   "max_evaluation_share": shares.max_evaluation_share, "reserved_for_evaluation": len(reserved),
                   "evaluation_note": evaluation_note(per_split[EVALUATION], len(fresh), shares)},
        "base": None if base_path is None else {"path": str(base_path.resolve()),
                                                "fingerprint": validate_dataset(base_path, check_images=False,
                                                                                progress=False).fingerprint},
        "label_conflicts": conflicts, "already_in_base": skipped,
        "confirmation": confirmation,
        "samples": lineage,
    }, indent=1))
    validate_dataset(out, progress=False)  # what `gourmetgram data validate` checks
    by_source: dict[str, int] = {}
    for rec in lineage:
        by_source[str(rec["label_source"])] = by_source.get(str(rec["label_source"]), 0) + 1
    return ExportReport(out, len(lineage), per_split, conflicts, skipped,
                        None if base_path is None else str(base_path), by_source, len(reserved),
                        evaluation_note(per_split[EVALUATION], len(fresh), shares))
