"""The differential gate: the candidate against the model now in production, on the same sets.

Absolute thresholds (the suite) say a model is good enough; this says it is not worse than
what users get today. Both models predict the same images: the dataset's ``evaluation``
split, divided into ``original`` (the base dataset's images) and ``production`` (labelled
production samples merged in from ``loop export``: files named in the export's lineage,
``prod_<hash>.*``). The candidate is rejected when, on any gated set with at least
``min_images`` images, its accuracy is below production's by more than ``tolerance``.

The comparison itself (:func:`compare`) is pure: predictions in, verdict out. The production
model is its exported bundle's ONNX graph (what Triton serves), run with ONNX Runtime on the
serving preprocessing; the candidate is its PyTorch checkpoint (the export is parity-checked).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from gourmetgram.constants import CLASS_NAMES_FILE
from gourmetgram.data.layout import IMAGE_SUFFIXES

ORIGINAL, PRODUCTION_SET = "original", "production"
PRODUCTION_PREFIX = "prod_"  # gourmetgram.loop.export names production files prod_<sha>.<ext>
LINEAGE_FILE = "production_lineage.json"  # the export's lineage.json, kept by the merge

Predict = Callable[[Sequence[Path]], list[int]]


@dataclasses.dataclass(frozen=True)
class SetComparison:
    name: str
    n_images: int
    candidate: float | None
    production: float | None
    gated: bool
    passed: bool

    @property
    def delta(self) -> float | None:
        if self.candidate is None or self.production is None:
            return None
        return self.candidate - self.production


@dataclasses.dataclass(frozen=True)
class Comparison:
    production_version: str
    tolerance: float
    sets: tuple[SetComparison, ...]
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {"production_version": self.production_version, "tolerance": self.tolerance,
                "passed": self.passed, "reasons": list(self.reasons),
                "sets": [dict(dataclasses.asdict(s), delta=s.delta) for s in self.sets]}


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


def _accuracy(truth: Sequence[int], predicted: Sequence[int]) -> float | None:
    return float(np.mean(np.asarray(truth) == np.asarray(predicted))) if len(truth) else None


def compare(sets: Mapping[str, tuple[Sequence[Path], Sequence[int]]], candidate: Predict, production: Predict,
            production_version: str, tolerance: float, gated: Sequence[str] = (ORIGINAL, PRODUCTION_SET),
            min_images: int = 1) -> Comparison:
    rows, reasons = [], []
    for name, (files, truth) in sets.items():
        if not files:
            rows.append(SetComparison(name, 0, None, None, name in gated, True))
            continue
        cand = _accuracy(truth, candidate(files))
        prod = _accuracy(truth, production(files))
        assert cand is not None and prod is not None
        is_gated = name in gated and len(files) >= min_images
        ok = not is_gated or cand >= prod - tolerance
        if not ok:
            reasons.append(f"differential gate: on the {name} evaluation set ({len(files)} images) the candidate's "
                           f"accuracy {cand:.3f} is below production (version {production_version}) {prod:.3f} "
                           f"by more than the tolerance {tolerance:.3f}")
        rows.append(SetComparison(name, len(files), cand, prod, is_gated, ok))
    return Comparison(production_version, tolerance, tuple(rows), tuple(reasons))


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
    """The report section (from :meth:`Comparison.to_dict`)."""
    lines = [f"Differential gate: candidate vs production (version {c['production_version']}), "
             f"tolerance {c['tolerance']:.3f}: {'PASSED' if c['passed'] else 'FAILED'}",
             f"  {'set':<12} {'images':>6} {'candidate':>9} {'production':>10} {'delta':>7}  gated"]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for s in c["sets"]:
        delta = "-" if s["delta"] is None else f"{s['delta']:+.3f}"
        lines.append(f"  {s['name']:<12} {s['n_images']:>6} {f(s['candidate']):>9} {f(s['production']):>10} "
                     f"{delta:>7}  {'yes' if s['gated'] else 'no'}{'' if s['passed'] else '  FAIL'}")
    return "\n".join(lines)


__all__ = ["compare", "evaluation_sets", "onnx_predictor", "format_comparison", "Comparison", "CLASS_NAMES_FILE"]
