"""The differential gate: the candidate against the model now in production, on the same images.

Absolute thresholds (the suite) say a model is good enough; this says it is not worse than
what users get today, and better where production data says today's model fails. Both models
predict the same images: the dataset's ``evaluation`` split, divided into ``original`` (the base
dataset's images) and ``production`` (labelled production samples merged in from ``loop
export``: files named in the export's lineage, ``prod_<hash>.*``).

A difference of a few images between two models is noise; the gate judges the paired figures
(:mod:`gourmetgram.evaluation.paired`: the images one model gets right and the other wrong),
at one-sided confidence ``c`` (``evaluation.differential.confidence``):

* **non-inferiority** on each gated set with at least ``min_images`` images: rejected only when
  the candidate is worse than production by more than ``margin`` with confidence ``c``, i.e.
  when the upper bound of the paired bootstrap interval of the accuracy difference lies below
  ``-margin``;
* **improvement** on the production set with at least ``improvement_min_images`` images (with
  ``require_improvement``): the candidate must be better, the one-sided exact McNemar test
  significant at ``1 - c``. With fewer images the set is judged for non-inferiority only and
  the report says why.

The verdict (:func:`judge`) is a pure function of the paired counts and the config; the
comparison (:func:`compare`) only produces the predictions. The production model is its exported
bundle's ONNX graph (what Triton serves), run with ONNX Runtime on the serving preprocessing;
the candidate is its PyTorch checkpoint (the export is parity-checked).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gourmetgram.config import DifferentialConfig
from gourmetgram.constants import CLASS_NAMES_FILE
from gourmetgram.data.layout import IMAGE_SUFFIXES
from gourmetgram.evaluation.paired import PairedCounts, difference_interval, mcnemar_p

ORIGINAL, PRODUCTION_SET = "original", "production"
PRODUCTION_PREFIX = "prod_"  # gourmetgram.loop.export names production files prod_<sha>.<ext>
LINEAGE_FILE = "production_lineage.json"  # the export's lineage.json, kept by the merge
NON_INFERIORITY, IMPROVEMENT, NOT_JUDGED = "non-inferiority", "improvement", "not judged"

Predict = Callable[[Sequence[Path]], list[int]]


@dataclasses.dataclass(frozen=True)
class SetComparison:
    """One evaluation set: the paired figures, the test it was judged by and the outcome."""

    name: str
    n_images: int
    candidate: float | None
    production: float | None
    gains: int = 0  # images the candidate gets right and production wrong
    losses: int = 0  # the reverse
    interval: tuple[float, float] | None = None  # paired bootstrap interval of the difference
    p_value: float | None = None  # exact McNemar, two-sided (any difference)
    p_better: float | None = None  # exact McNemar, one-sided (the candidate better)
    test: str = NOT_JUDGED
    passed: bool = True
    note: str = ""  # why a set was not judged, or judged for non-inferiority only

    @property
    def gated(self) -> bool:
        return self.test != NOT_JUDGED

    @property
    def delta(self) -> float | None:
        if self.candidate is None or self.production is None:
            return None
        return self.candidate - self.production

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["interval"] = None if self.interval is None else list(self.interval)
        return dict(d, delta=self.delta, gated=self.gated)


@dataclasses.dataclass(frozen=True)
class Comparison:
    production_version: str
    margin: float
    confidence: float
    sets: tuple[SetComparison, ...]
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {"production_version": self.production_version, "margin": self.margin,
                "confidence": self.confidence, "passed": self.passed, "reasons": list(self.reasons),
                "sets": [s.to_dict() for s in self.sets]}


def evaluation_sets(dataset_root: str | Path) -> dict[str, tuple[list[Path], list[int]]]:
    """``{set name: (files, true class indices)}`` from the evaluation split."""
    root = Path(dataset_root)
    production = _production_files(root)
    sets: dict[str, tuple[list[Path], list[int]]] = {ORIGINAL: ([], []), PRODUCTION_SET: ([], [])}
    for class_dir in sorted((root / "evaluation").glob("class_*")):
        label = int(class_dir.name.split("_")[1])
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = str(path.relative_to(root))
            name = PRODUCTION_SET if rel in production or path.name.startswith(PRODUCTION_PREFIX) else ORIGINAL
            sets[name][0].append(path)
            sets[name][1].append(label)
    return sets


def _production_files(root: Path) -> set[str]:
    path = root / LINEAGE_FILE
    if not path.is_file():
        return set()
    try:
        return {f["file"] for f in json.loads(path.read_text()).get("samples", [])}
    except (ValueError, AttributeError, KeyError, TypeError):
        return set()


def judge(name: str, counts: PairedCounts | None, cfg: DifferentialConfig) -> SetComparison:
    """The verdict on one set from its paired counts (``None``: the set is empty). Pure."""
    if counts is None or counts.n == 0:
        return SetComparison(name, 0, None, None, note="no images")
    level = 2 * cfg.confidence - 1  # a two-sided interval whose bounds are one-sided at `confidence`
    interval = difference_interval(counts, level)
    row: dict[str, Any] = dict(name=name, n_images=counts.n, candidate=counts.candidate_accuracy,
               production=counts.production_accuracy, gains=counts.gains, losses=counts.losses,
               interval=interval, p_value=mcnemar_p(counts), p_better=mcnemar_p(counts, "greater"))
    if name not in cfg.gated_sets:
        return SetComparison(**row, note="not a gated set (evaluation.differential.gated_sets)")
    if counts.n < cfg.min_images:
        return SetComparison(**row, note=f"fewer than {cfg.min_images} images (evaluation.differential.min_images): "
                                         "not judged")
    if cfg.require_improvement and name == PRODUCTION_SET:
        if counts.n >= cfg.improvement_min_images:
            assert row["p_better"] is not None
            return SetComparison(**row, test=IMPROVEMENT, passed=row["p_better"] < 1 - cfg.confidence)
        row["note"] = (f"{counts.n} images, fewer than the {cfg.improvement_min_images} an improvement test needs "
                       "(evaluation.differential.improvement_min_images): judged for non-inferiority only")
    return SetComparison(**row, test=NON_INFERIORITY, passed=interval[1] >= -cfg.margin)


def reason(row: SetComparison, cfg: DifferentialConfig, production_version: str) -> str:
    """Why a failed set rejects the candidate, with its figures."""
    assert row.interval is not None and row.delta is not None
    where = (f"differential gate: on the {row.name} evaluation set ({row.n_images} images) the candidate's "
             f"accuracy {row.candidate:.3f} vs production (version {production_version}) {row.production:.3f}, "
             f"difference {row.delta:+.3f} ({row.gains} gained, {row.losses} lost)")
    if row.test == IMPROVEMENT:
        return (f"{where}: not better with {cfg.confidence:.0%} confidence (exact McNemar, one-sided "
                f"p = {row.p_better:.3g} >= {1 - cfg.confidence:.3g})")
    return (f"{where}: worse by more than the margin {cfg.margin:.3f} with {cfg.confidence:.0%} confidence "
            f"(its upper bound {row.interval[1]:+.3f} < {-cfg.margin:+.3f})")


def judge_sets(counts: Mapping[str, PairedCounts | None], production_version: str,
               cfg: DifferentialConfig) -> Comparison:
    """The gate's verdict over every set (a pure function of the paired counts and the config)."""
    rows = tuple(judge(name, c, cfg) for name, c in counts.items())
    reasons = tuple(reason(r, cfg, production_version) for r in rows if not r.passed)
    return Comparison(production_version, cfg.margin, cfg.confidence, rows, reasons)


def compare(sets: Mapping[str, tuple[Sequence[Path], Sequence[int]]], candidate: Predict, production: Predict,
            production_version: str, cfg: DifferentialConfig) -> Comparison:
    """Both models' predictions on every set, then :func:`judge_sets`."""
    counts: dict[str, PairedCounts | None] = {}
    for name, (files, truth) in sets.items():
        counts[name] = PairedCounts.from_predictions(truth, candidate(files), production(files)) if files else None
    return judge_sets(counts, production_version, cfg)


def onnx_predictor(bundle_dir: str | Path, model_name: str, batch_size: int = 32) -> Predict:
    """Class predictions of an exported bundle's ONNX graph (the served model), on the serving
    preprocessing."""
    from gourmetgram.bundle import Bundle
    from gourmetgram.export import run_onnx
    from gourmetgram.preprocessing import preprocess_bytes

    bundle = Bundle(Path(bundle_dir), model_name)
    spec = bundle.load_spec()
    path = bundle.served_onnx()

    def predict(files: Sequence[Path]) -> list[int]:
        out: list[int] = []
        for start in range(0, len(files), batch_size):
            x = np.stack([preprocess_bytes(p.read_bytes(), spec.image_size) for p in files[start:start + batch_size]])
            out += run_onnx(path, x.astype(np.float32)).argmax(1).tolist()
        return out

    return predict


def format_comparison(c: dict) -> str:
    """The report section (from :meth:`Comparison.to_dict`): per set the accuracies, the paired
    difference with its interval and the exact McNemar p-value, the test and its outcome."""
    confidence = c["confidence"]
    lines = [f"Differential gate: candidate vs production (version {c['production_version']}), paired on the "
             f"same images: {'PASSED' if c['passed'] else 'FAILED'}",
             f"  non-inferiority margin {c['margin']:.3f}; one-sided tests at {confidence:.0%} confidence; "
             f"interval: paired bootstrap, {2 * confidence - 1:.0%} two-sided; p: exact McNemar, two-sided",
             f"  {'set':<12} {'images':>6} {'candidate':>9} {'production':>10} {'diff':>7} {'interval':>17} "
             f"{'+/-':>7} {'p':>7}  test"]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for s in c["sets"]:
        delta = "-" if s["delta"] is None else f"{s['delta']:+.3f}"
        interval = "-" if s["interval"] is None else f"[{s['interval'][0]:+.3f}, {s['interval'][1]:+.3f}]"
        p = "-" if s["p_value"] is None else f"{s['p_value']:.3g}"
        pairs = "-" if s["candidate"] is None else f"{s['gains']}/{s['losses']}"
        test = s["test"]
        if test == IMPROVEMENT:
            test += f" (one-sided p {s['p_better']:.3g})"
        if test != NOT_JUDGED:
            test += ": pass" if s["passed"] else ": FAIL"
        lines.append(f"  {s['name']:<12} {s['n_images']:>6} {f(s['candidate']):>9} {f(s['production']):>10} "
                     f"{delta:>7} {interval:>17} {pairs:>7} {p:>7}  {test}")
        if s.get("note"):
            lines.append(f"  {'':<12} {s['note']}")
    return "\n".join(lines)


__all__ = ["compare", "judge", "judge_sets", "evaluation_sets", "onnx_predictor", "format_comparison",
           "Comparison", "SetComparison", "CLASS_NAMES_FILE"]
