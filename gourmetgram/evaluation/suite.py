"""The offline evaluation suite: the gate between training and registration.

The course's four kinds of offline test, each compared with a threshold from the config:

1. standard metrics on ``<dataset>/evaluation``: overall and per-class accuracy, macro F1,
   a confusion matrix (saved as a picture);
2. slices: accuracy on named subsets (``eval_sets/slices/...``, class_XX layout);
3. known failure modes: a folder whose images all belong to one expected class;
4. template tests: a food composed on backgrounds with extra objects (invariance,
   sensitivity, accuracy; see :mod:`gourmetgram.evaluation.templates`).

Not gated, reported: the calibration the export will ship (temperature scaling fitted on the
validation split, ECE before and after on the evaluation split, reliability tables) and the
share of photos its OOD threshold flags on the evaluation split and on the configured
out-of-distribution sets (:mod:`gourmetgram.evaluation.calibration`).

Images go through the ONE preprocessing definition (:mod:`gourmetgram.preprocessing`),
batched, under ``torch.inference_mode``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from gourmetgram.classes import read_class_names
from gourmetgram.config import EvaluationConfig
from gourmetgram.data.dataset import ImageFolderDataset
from gourmetgram.data.layout import IMAGE_SUFFIXES, list_images
from gourmetgram.errors import ConfigError, DatasetError
from gourmetgram.evaluation import calibration as C
from gourmetgram.evaluation import metrics as M
from gourmetgram.evaluation import templates as T
from gourmetgram.model import Classifier
from gourmetgram.preprocessing import preprocess, preprocess_bytes

JSON_NAME = "evaluation.json"
CONFUSION_PNG = "confusion_matrix.png"
REPORT_NAME = "evaluation_report.txt"


class Check(NamedTuple):
    """One thresholded figure: passed when ``value >= threshold``."""

    name: str
    value: float
    threshold: float
    passed: bool


@dataclasses.dataclass
class EvaluationResult:
    passed: bool
    reasons: list[str]
    checks: list[Check]
    metrics: dict[str, float]
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    n_images: int
    slices: dict[str, dict] = dataclasses.field(default_factory=dict)  # name -> accuracy, n_images, min_accuracy
    failure_modes: dict[str, dict] = dataclasses.field(default_factory=dict)  # + expected_class, predicted counts
    templates: dict | None = None  # accuracy, invariance, sensitivity, n_compositions, n_swaps, failures
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)  # confusion_matrix, json -> paths
    comparison: dict | None = None  # the differential gate against production (differential.Comparison.to_dict)
    calibration: dict | None = None  # C.CalibrationReport.to_dict: temperature, ECE, reliability, OOD rates

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["checks"] = [c._asdict() for c in self.checks]
        return _nan_to_none(d)

    def to_json(self, path: str | Path | None = None) -> str:
        """The result as JSON (NaN written as null); also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluationResult":
        d = dict(d)
        d["checks"] = [Check(c["name"], _num(c["value"]), _num(c["threshold"]), bool(c["passed"]))
                       for c in d["checks"]]
        d["metrics"] = {k: _num(v) for k, v in d["metrics"].items()}
        d["per_class_accuracy"] = {k: _num(v) for k, v in d["per_class_accuracy"].items()}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> "EvaluationResult":
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"evaluation result {path} does not exist")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path} is not an evaluation result: {exc}") from exc

    # -- the report ----------------------------------------------------------------------------
    def format_report(self) -> str:
        """A plain-text report: per-class table, slices, failure modes, templates, verdict."""
        checks = {c.name: c for c in self.checks}
        lines = [f"Offline evaluation: {'PASSED' if self.passed else 'FAILED'}",
                 f"evaluation set: {self.n_images} images, {len(self.class_names)} classes", ""]
        overall = checks.get("overall accuracy")
        lines.append(f"overall accuracy {_fmt(self.metrics.get('eval/accuracy'))}"
                     + (f" (min {overall.threshold:.3f}) {_ok(overall)}" if overall else "")
                     + f"   macro F1 {_fmt(self.metrics.get('eval/macro_f1'))}")
        lines += ["", "Per-class accuracy",
                  f"  {'class':<20} {'images':>6} {'accuracy':>9} {'min':>6}  result"]
        support = np.asarray(self.confusion_matrix).sum(axis=1) if self.confusion_matrix else []
        for i, name in enumerate(self.class_names):
            check = checks.get(f"class accuracy {name}")
            lines.append(f"  {name:<20} {int(support[i]) if len(support) else 0:>6} "
                         f"{_fmt(self.per_class_accuracy.get(name)):>9} "
                         f"{_fmt(check.threshold) if check else '-':>6}  {_ok(check)}")
        if self.slices:
            lines += ["", "Slices", f"  {'slice':<20} {'images':>6} {'accuracy':>9} {'min':>6}  result"]
            for name, s in self.slices.items():
                lines.append(f"  {name:<20} {s['n_images']:>6} {_fmt(s['accuracy']):>9} "
                             f"{_fmt(s['min_accuracy']):>6}  {_ok(checks.get(f'slice {name} accuracy'))}")
        if self.failure_modes:
            lines += ["", "Known failure modes (all images should be the expected class)",
                      f"  {'set':<20} {'expected':<12} {'images':>6} {'accuracy':>9} {'min':>6}  result"]
            for name, f in self.failure_modes.items():
                lines.append(f"  {name:<20} {f['expected_name'][:12]:<12} {f['n_images']:>6} "
                             f"{_fmt(f['accuracy']):>9} {_fmt(f['min_accuracy']):>6}  "
                             f"{_ok(checks.get(f'failure mode {name} accuracy'))}")
                if f.get("predicted"):
                    shown = ", ".join(f"{k} {v}" for k, v in list(f["predicted"].items())[:4])
                    lines.append(f"  {'':<20} predicted: {shown}")
        if self.templates:
            t = self.templates
            lines += ["", f"Template tests ({t['n_compositions']} compositions, {t['n_swaps']} food swaps)",
                      f"  {'figure':<20} {'value':>9} {'min':>6}  result"]
            for figure in ("invariance", "sensitivity", "accuracy"):
                check = checks.get(f"template {figure}")
                lines.append(f"  {figure:<20} {_fmt(t[figure]):>9} "
                             f"{_fmt(check.threshold) if check else '-':>6}  {_ok(check)}")
            if t.get("failures"):
                lines.append(f"  {len(t['failures'])} misclassified compositions, e.g.:")
                lines += [f"    {f}" for f in t["failures"][:5]]
        if self.calibration:
            lines += ["", *C.format_calibration(self.calibration)]
        if self.comparison:
            from gourmetgram.evaluation.differential import format_comparison

            lines += ["", format_comparison(self.comparison)]
        lines += ["", f"Verdict: {'PASSED' if self.passed else 'FAILED'} "
                      f"({sum(c.passed for c in self.checks)}/{len(self.checks)} checks passed)"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _ok(check: Check | None) -> str:
    return "-" if check is None else ("ok" if check.passed else "FAIL")


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


# -- inference ---------------------------------------------------------------------------------

def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _predict_arrays(model: nn.Module, batches: Iterable[np.ndarray | torch.Tensor]) -> list[int]:
    device = _device(model)
    out: list[int] = []
    with torch.inference_mode():
        for x in batches:
            x = torch.as_tensor(x, dtype=torch.float32).to(device)
            out += model(x).argmax(1).cpu().tolist()
    return out


def predict_folder(model: nn.Module, folder: Path, image_size: int, batch_size: int) -> tuple[list[int], list[int]]:
    """(true labels, predictions) over ``folder/class_XX/*`` via the training dataset class."""
    dataset = ImageFolderDataset(folder, image_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return dataset.labels, _predict_arrays(model, (x for x, _ in loader))


def predict_files(model: nn.Module, paths: Sequence[Path], image_size: int, batch_size: int) -> list[int]:
    """Predictions for image files (decoded and preprocessed exactly as in serving)."""
    def batches():
        for start in range(0, len(paths), batch_size):
            yield np.stack([preprocess_bytes(p.read_bytes(), image_size) for p in paths[start:start + batch_size]])
    return _predict_arrays(model, batches())


def predict_images(model: nn.Module, images, image_size: int, batch_size: int) -> list[int]:
    """Predictions for in-memory PIL images (template compositions)."""
    def batches():
        for start in range(0, len(images), batch_size):
            yield np.stack([preprocess(im, image_size) for im in images[start:start + batch_size]])
    return _predict_arrays(model, batches())


# -- the suite ---------------------------------------------------------------------------------

def _resolve(root: Path, relative: str, what: str) -> Path:
    path = (root / relative) if not Path(relative).is_absolute() else Path(relative)
    if not path.is_dir():
        raise ConfigError(f"evaluation {what}: folder {relative!r} does not exist (looked for {path})")
    return path


def _files_under(folder: Path) -> list[Path]:
    """Images directly in ``folder`` or one level down (flat or class_XX layout)."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            files += [q for q in sorted(p.iterdir()) if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES]
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
    return files


def _check_thresholds(cfg: EvaluationConfig) -> None:
    named = [("min_overall_accuracy", cfg.min_overall_accuracy), ("min_per_class_accuracy", cfg.min_per_class_accuracy)]
    named += [(f"slices[{s.name}].min_accuracy", s.min_accuracy) for s in cfg.slices]
    named += [(f"failure_modes[{f.name}].min_accuracy", f.min_accuracy) for f in cfg.failure_modes]
    if cfg.templates:
        t = cfg.templates
        named += [("templates.min_invariance", t.min_invariance), ("templates.min_sensitivity", t.min_sensitivity)]
        if t.min_accuracy is not None:
            named.append(("templates.min_accuracy", t.min_accuracy))
        if t.foods_per_class < 1:
            raise ConfigError("evaluation.templates.foods_per_class must be >= 1")
    bad = [name for name, value in named if not 0 <= value <= 1]
    if bad:
        raise ConfigError(f"evaluation thresholds must be in [0, 1]: {', '.join(bad)}")
    if cfg.batch_size < 1:
        raise ConfigError("evaluation.batch_size must be >= 1")
    names = [s.name for s in cfg.slices] + [f.name for f in cfg.failure_modes]
    if len(set(names)) != len(names):
        raise ConfigError(f"evaluation slice/failure-mode names must be unique, got {names}")


def evaluate(model: Classifier, dataset_root: Path, cfg: EvaluationConfig, out_dir: Path,
             ood_pass_rate: float = C.OOD_PASS_RATE) -> EvaluationResult:
    """Run every configured test, compare with the thresholds, write the PNG and the JSON.

    ``ood_pass_rate``: the export's (``export.ood_pass_rate``), so the report's OOD figures
    are those of the threshold the bundle will carry."""
    root, out_dir = Path(dataset_root), Path(out_dir)
    _check_thresholds(cfg)
    spec = model.spec
    class_names, size, bs = list(spec.class_names), spec.image_size, cfg.batch_size
    eval_dir = root / "evaluation"
    if not eval_dir.is_dir():
        raise DatasetError(f"dataset {root} has no evaluation/ folder to evaluate on")
    # Resolve every configured folder before the (slow) inference, so a typo fails fast.
    slice_dirs = [(s, _resolve(root, s.path, f"slice {s.name!r}")) for s in cfg.slices]
    mode_dirs = [(f, _resolve(root, f.path, f"failure mode {f.name!r}")) for f in cfg.failure_modes]
    expected = [(f"failure mode {f.name!r}", f.expected_class) for f in cfg.failure_modes]
    expected += [(f"slice {s.name!r}", s.expected_class) for s in cfg.slices if s.expected_class is not None]
    for what, cls in expected:
        if not 0 <= cls < len(class_names):
            raise ConfigError(f"evaluation {what}: expected_class {cls} is not a class "
                              f"of this model (0..{len(class_names) - 1})")
    library = T.load_library(root / cfg.templates.path) if cfg.templates else None
    ood_dirs = {o.name: _resolve(root, o.path, f"OOD set {o.name!r}") for o in cfg.ood_sets}

    model.eval()
    checks: list[Check] = []
    metrics: dict[str, float] = {}

    def check(name: str, value: float, threshold: float) -> None:
        checks.append(Check(name, value, threshold, M.is_number(value) and value >= threshold))

    # 1. standard metrics
    if not list_images(eval_dir):
        raise DatasetError(f"{eval_dir} holds no images in class_XX folders")
    eval_logits, eval_labels = C.folder_logits(model, eval_dir, size, bs)
    y_true, y_pred = eval_labels.tolist(), eval_logits.argmax(axis=1).tolist()
    if max(y_true) >= len(class_names):
        raise DatasetError(f"{eval_dir} has class_{max(y_true):02d} but the model knows {len(class_names)} classes")
    dataset_names = _dataset_class_names(root, eval_dir)
    if dataset_names and dataset_names != class_names:
        raise DatasetError(f"the dataset's classes {dataset_names} differ from the model's {class_names}")
    cm = M.confusion_matrix(y_true, y_pred, len(class_names))
    overall = M.accuracy(y_true, y_pred)
    per_class = dict(zip(class_names, M.per_class_accuracy(cm)))
    metrics["eval/accuracy"] = overall
    metrics["eval/macro_f1"] = M.macro_f1(cm)
    metrics["eval/n_images"] = float(len(y_true))
    check("overall accuracy", overall, cfg.min_overall_accuracy)
    for name, acc in per_class.items():
        metrics[f"eval/class_accuracy/{M.metric_key(name)}"] = acc
        check(f"class accuracy {name}", acc, cfg.min_per_class_accuracy)
    metrics["eval/min_class_accuracy"] = min((a for a in per_class.values() if M.is_number(a)), default=float("nan"))

    # 2. slices
    slices: dict[str, dict] = {}
    for s, folder in slice_dirs:
        if s.expected_class is not None:  # one-class slice, flat or class_XX (the course's indian_dessert)
            files = _files_under(folder)
            if not files:
                raise ConfigError(f"evaluation slice {s.name!r}: {folder} holds no images")
            preds = predict_files(model, files, size, bs)
            labels = [s.expected_class] * len(preds)
        else:
            if not list_images(folder):
                raise ConfigError(f"evaluation slice {s.name!r}: {folder} holds no images in class_XX folders")
            labels, preds = predict_folder(model, folder, size, bs)
        acc = M.accuracy(labels, preds)
        slices[s.name] = {"accuracy": acc, "n_images": len(labels), "min_accuracy": s.min_accuracy, "path": s.path}
        metrics[f"eval/slice/{M.metric_key(s.name)}/accuracy"] = acc
        check(f"slice {s.name} accuracy", acc, s.min_accuracy)

    # 3. known failure modes
    modes: dict[str, dict] = {}
    for f, folder in mode_dirs:
        files = _files_under(folder)
        if not files:
            raise ConfigError(f"evaluation failure mode {f.name!r}: {folder} holds no images")
        preds = predict_files(model, files, size, bs)
        acc = float(np.mean([p == f.expected_class for p in preds]))
        counts = np.bincount(preds, minlength=len(class_names))
        predicted = {class_names[i]: int(counts[i]) for i in np.argsort(-counts, kind="stable") if counts[i]}
        modes[f.name] = {"accuracy": acc, "n_images": len(files), "min_accuracy": f.min_accuracy,
                         "expected_class": f.expected_class, "expected_name": class_names[f.expected_class],
                         "predicted": predicted, "path": f.path}
        metrics[f"eval/failure_mode/{M.metric_key(f.name)}/accuracy"] = acc
        check(f"failure mode {f.name} accuracy", acc, f.min_accuracy)

    # 4. template tests
    template_result = None
    if cfg.templates and library is not None:
        tc = cfg.templates
        unknown = sorted(c for c in library.foods if c >= len(class_names))
        if unknown:
            raise ConfigError(f"template foods for class_{unknown[0]:02d}, which this model does not have")
        plan = T.plan_compositions(library, tc.foods_per_class, tc.seed)
        preds = predict_images(model, T.render(plan), size, bs)
        scores = T.score_templates(plan, preds, class_names)
        template_result = dataclasses.asdict(scores)
        for figure in ("invariance", "sensitivity", "accuracy"):
            metrics[f"eval/template/{figure}"] = getattr(scores, figure)
        check("template invariance", scores.invariance, tc.min_invariance)
        check("template sensitivity", scores.sensitivity, tc.min_sensitivity)
        if tc.min_accuracy is not None:
            check("template accuracy", scores.accuracy, tc.min_accuracy)

    # 5. calibration and the OOD threshold, as the export will fit them (reported, not gated)
    calibration = None
    if (root / "validation").is_dir() and list_images(root / "validation"):
        ood_logits = {name: C.files_logits(model, _files_under(folder), size, bs) for name, folder in ood_dirs.items()}
        calibration = C.calibration_report(model, root, eval_logits, eval_labels, ood_logits, bs, ood_pass_rate)
        metrics.update(C.report_metrics(calibration))

    reasons = [f"{c.name} {_fmt(c.value)} < {c.threshold:.3f}" for c in checks if not c.passed]
    metrics["eval/passed"] = float(not reasons)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = M.plot_confusion_matrix(cm, class_names, out_dir / CONFUSION_PNG,
                                  title=f"Confusion matrix: {eval_dir.name} set, accuracy {overall:.3f}")
    result = EvaluationResult(
        passed=not reasons, reasons=reasons, checks=checks, metrics=metrics,
        per_class_accuracy=per_class, confusion_matrix=cm.tolist(), class_names=class_names,
        n_images=len(y_true), slices=slices, failure_modes=modes, templates=template_result,
        calibration=calibration.to_dict() if calibration else None,
        artifacts={"confusion_matrix": str(png), "json": str(out_dir / JSON_NAME),
                   "report": str(out_dir / REPORT_NAME)},
    )
    result.to_json(out_dir / JSON_NAME)
    (out_dir / REPORT_NAME).write_text(result.format_report() + "\n")
    return result


def _dataset_class_names(root: Path, eval_dir: Path) -> list[str] | None:
    """The dataset's own class names when it states them (classes.txt), else None."""
    n_dirs = sum(1 for p in eval_dir.iterdir() if p.is_dir())
    try:
        return read_class_names(root, n_dirs) if (root / "classes.txt").exists() else None
    except DatasetError:
        return None


# -- MLflow ------------------------------------------------------------------------------------

def log_evaluation(result: EvaluationResult, run_id: str | None) -> None:
    """Log metrics, the confusion matrix, the JSON and the report to MLflow, tag the verdict.

    Resumes ``run_id`` (the training run) so the evaluation sits next to the model it judged;
    with ``None`` a new run named ``evaluation`` is started.
    """
    from gourmetgram.tracking import configure_mlflow

    mlflow = configure_mlflow()
    active = mlflow.active_run()
    if active is not None and run_id is not None and active.info.run_id == run_id:
        _log(mlflow, result)
        return
    if active is not None and run_id is None:
        with mlflow.start_run(run_name="evaluation", nested=True):
            _log(mlflow, result)
        return
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "evaluation"):
        _log(mlflow, result)


def _log(mlflow, result: EvaluationResult) -> None:
    mlflow.log_metrics({k: v for k, v in result.metrics.items() if M.is_number(v)})
    mlflow.set_tag("evaluation.passed", str(result.passed).lower())
    mlflow.log_dict(result.to_dict(), f"evaluation/{JSON_NAME}")
    mlflow.log_text(result.format_report(), f"evaluation/{REPORT_NAME}")
    png = result.artifacts.get("confusion_matrix")
    if png and Path(png).is_file():
        mlflow.log_artifact(png, artifact_path="evaluation")
