"""Drift that says what changed: simple image properties of served photos vs the training photos.

Per photo (:func:`image_properties`): brightness (mean luma), contrast (luma standard
deviation), sharpness (variance of the Laplacian of the luma), colourfulness (Hasler and
Suesstrunk 2003), size (megapixels) and aspect ratio (width / height). Brightness, contrast,
sharpness and colourfulness are measured on the photo scaled to fit 256 x 256, so they do
not depend on the camera's resolution; size and aspect ratio on the photo as sent.

The reference (:func:`build_profile`, written by ``drift_detector.build`` next to the MMD
reference) keeps each property's values over the training sample, overall and per class.
Online (:class:`ProfileDrift`), over the last ``window`` photos: per property the two-sample
Kolmogorov-Smirnov statistic against the reference (how much moved) and the standardised mean
shift (which way); per predicted class the largest standardised shift of its photos against
that class's training photos; and the photos furthest from the reference (their sample ids:
the operator page shows them from the capture sink's object store).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from gourmetgram.errors import BadInput

PROFILE_FILE = "profile.json"
PROPERTIES = ("brightness", "contrast", "sharpness", "colourfulness", "size", "aspect_ratio")
MEASURE_SIDE = 256  # photos are scaled to fit this square before the pixel statistics
MIN_WINDOW = 30  # photos before the shift statistics are reported
MIN_CLASS = 5  # photos of a predicted class before its shift is reported
ATYPICAL_SHOWN = 6


def image_properties(blob: bytes) -> dict[str, float]:
    """The properties of one encoded photo (raises :class:`BadInput` if it does not decode)."""
    try:
        opened = Image.open(io.BytesIO(blob))
        width, height = opened.size
        opened.draft("RGB", (MEASURE_SIDE, MEASURE_SIDE))  # JPEG: decode at a fraction of the size
        image = opened.convert("RGB")
        image.thumbnail((MEASURE_SIDE, MEASURE_SIDE))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise BadInput(f"not a decodable image: {type(exc).__name__}") from None
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    laplacian = (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]
                 - 4 * luma[1:-1, 1:-1]) if min(luma.shape) > 2 else np.zeros(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = (np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))
    return {"brightness": float(luma.mean()), "contrast": float(luma.std()),
            "sharpness": float(laplacian.var()), "colourfulness": float(colourfulness),
            "size": width * height / 1e6, "aspect_ratio": width / max(1, height)}


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "n": int(array.size)}


def build_profile(blobs: Sequence[bytes], labels: Sequence[int], class_names: Sequence[str]) -> dict:
    """The reference profile of labelled training photos (what ``profile.json`` holds)."""
    rows = [(image_properties(blob), label) for blob, label in zip(blobs, labels)]
    if not rows:
        raise BadInput("the image-property reference needs at least one photo")
    by_class: dict[str, dict] = {}
    for index, name in enumerate(class_names):
        members = [props for props, label in rows if label == index]
        if members:
            by_class[name] = {p: _stats([m[p] for m in members]) for p in PROPERTIES}
    return {"properties": {p: sorted(props[p] for props, _ in rows) for p in PROPERTIES},
            "by_class": by_class, "n": len(rows)}


def write_profile(folder: Path, profile: dict) -> Path:
    path = Path(folder) / PROFILE_FILE
    path.write_text(json.dumps(profile))
    return path


@dataclasses.dataclass
class _Photo:
    sample_id: str
    properties: dict[str, float]
    predicted: int | None = None


def _z(value: float, stats: dict[str, float]) -> float:
    return (value - stats["mean"]) / stats["std"] if stats["std"] > 0 else 0.0


class ProfileDrift:
    """Served photos' properties over a sliding window against the reference profile.

    The worker thread adds photos and predictions; ``/status`` and ``/metrics`` read
    :meth:`report` (a lock guards the window)."""

    def __init__(self, profile: dict, class_names: Sequence[str], prior: Sequence[float] | None = None,
                 window: int = 200) -> None:
        try:
            self.reference = {p: np.asarray(profile["properties"][p], dtype=np.float64) for p in PROPERTIES}
            self.by_class: dict[str, dict] = profile.get("by_class", {})
        except (KeyError, TypeError) as exc:
            raise BadInput(f"the image-property profile is incomplete ({exc}); rebuild the detector") from None
        self.stats = {p: {"mean": float(v.mean()), "std": float(v.std())} for p, v in self.reference.items()}
        self.class_names = list(class_names)
        self.prior = None if prior is None else np.asarray(prior, dtype=np.float64)
        self.photos: collections.OrderedDict[str, _Photo] = collections.OrderedDict()
        self.window = window
        self._early: collections.OrderedDict[str, int] = collections.OrderedDict()  # answers before images
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path, class_names: Sequence[str], prior: Sequence[float] | None = None,
             window: int = 200) -> "ProfileDrift | None":
        """The profile of a detector folder, or None for one built before profiles existed."""
        path = Path(folder) / PROFILE_FILE
        if not path.is_file():
            return None
        return cls(json.loads(path.read_text()), class_names, prior, window)

    def add_photo(self, sample_id: str, properties: dict[str, float]) -> None:
        with self._lock:
            self.photos[sample_id] = _Photo(sample_id, properties, self._early.pop(sample_id, None))
            self.photos.move_to_end(sample_id)
            while len(self.photos) > self.window:
                self.photos.popitem(last=False)

    def add_predictions(self, items: Iterable[tuple[str, int]]) -> None:
        with self._lock:
            for sample_id, predicted in items:
                photo = self.photos.get(sample_id)
                if photo is not None:
                    photo.predicted = predicted
                else:  # the answer came first: keep it for the photo (bounded)
                    self._early[sample_id] = predicted
                    while len(self._early) > self.window:
                        self._early.popitem(last=False)

    def report(self) -> dict:
        """Per property the KS statistic and standardised shift, per predicted class its share
        and shift, and the most atypical recent photos; empty figures below ``MIN_WINDOW``."""
        from scipy.stats import ks_2samp

        with self._lock:
            photos = list(self.photos.values())
        out: dict = {"window": len(photos), "properties": {}, "classes": {}, "atypical": [], "moved": []}
        if len(photos) < MIN_WINDOW:
            return out
        for p in PROPERTIES:
            values = np.asarray([photo.properties[p] for photo in photos])
            ks = ks_2samp(values, self.reference[p])
            out["properties"][p] = {"ks": float(ks.statistic), "p_value": float(ks.pvalue),
                                    "shift_sd": _z(float(values.mean()), self.stats[p]),
                                    "mean": float(values.mean()), "reference_mean": self.stats[p]["mean"]}
        predicted = [photo.predicted for photo in photos if photo.predicted is not None]
        for index, name in enumerate(self.class_names):
            members = [photo for photo in photos if photo.predicted == index]
            entry: dict = {"n": len(members), "share": len(members) / len(predicted) if predicted else None,
                           "prior": float(self.prior[index]) if self.prior is not None and index < len(self.prior)
                           else None, "shift_sd": None, "property": None}
            reference = self.by_class.get(name)
            if reference and len(members) >= MIN_CLASS:
                shifts = {p: _z(float(np.mean([m.properties[p] for m in members])), reference[p]) for p in PROPERTIES}
                worst = max(shifts, key=lambda p: abs(shifts[p]))
                entry.update(shift_sd=shifts[worst], property=worst)
            out["classes"][name] = entry
        scored: list[dict[str, Any]] = []
        for photo in photos:
            zs = {p: _z(photo.properties[p], self.stats[p]) for p in PROPERTIES}
            worst = max(zs, key=lambda p: abs(zs[p]))
            scored.append({"sample_id": photo.sample_id, "atypicality": abs(zs[worst]), "property": worst,
                           "shift_sd": zs[worst], "predicted": None if photo.predicted is None
                           else self.class_names[photo.predicted] if photo.predicted < len(self.class_names)
                           else str(photo.predicted)})
        out["atypical"] = sorted(scored, key=lambda s: -s["atypicality"])[:ATYPICAL_SHOWN]
        out["moved"] = moved(out)
        return out


MOVED_P_VALUE = 0.01  # a property "moved" when its KS test says so at this level
MOVED_CLASS_SD = 1.0  # a class "moved" when its photos shifted by at least this many sd


def moved(report: dict, top: int = 3) -> dict[str, list[str]]:
    """The properties and predicted classes that moved most, for people: ``"brightness down
    2.1 sd (KS 0.81)"``, ``"one: 62% of answers (prior 10%), brightness down 2.4 sd"``."""
    props = sorted(((name, p) for name, p in report["properties"].items() if p["p_value"] < MOVED_P_VALUE),
                   key=lambda kv: -kv[1]["ks"])[:top]
    classes = sorted(((name, c) for name, c in report["classes"].items()
                      if c["shift_sd"] is not None and abs(c["shift_sd"]) >= MOVED_CLASS_SD),
                     key=lambda kv: -abs(kv[1]["shift_sd"]))[:top]

    def way(shift: float) -> str:
        return f"{'up' if shift > 0 else 'down'} {abs(shift):.1f} sd"

    return {
        "properties": [f"{name.replace('_', ' ')} {way(p['shift_sd'])} (KS {p['ks']:.2f})" for name, p in props],
        "classes": [f"{name}: {c['share']:.0%} of answers" + (f" (prior {c['prior']:.0%})" if c["prior"] is not None
                                                              else "")
                    + f", {c['property'].replace('_', ' ')} {way(c['shift_sd'])}" for name, c in classes],
    }
