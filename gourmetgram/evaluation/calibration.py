"""Fitting a model's calibration on the validation split, and measuring calibration.

* :func:`fit_temperature`: temperature scaling (Guo et al., ICML 2017), one scalar by
  minimising the negative log-likelihood with SciPy's bounded 1-D search on log T;
* :func:`expected_calibration_error` and :func:`reliability_table` (in :mod:`gourmetgram.calibration`,
  which the capture sink uses too): 15 equal-width bins of top-1 confidence;
* :func:`fit_calibration`: the bundle's :class:`gourmetgram.calibration.Calibration`, with the
  energy-score OOD threshold (``ood_pass_rate`` of validation photos pass), the class prior
  and the ATC threshold (Garg et al., ICLR 2022) of each estimation method
  (:mod:`gourmetgram.estimation`);
* :func:`ood_rates`: the share of photos a threshold flags, per named set (the offline report).

Export and the offline evaluation call the same fit on the same split, so the report's
figures are those of the bundle that is served.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from gourmetgram.calibration import (
    ECE_BINS,
    Calibration,
    ReliabilityBin,
    calibrated_probabilities,
    expected_calibration_error,
    log_softmax,
    reliability_table,
)
from gourmetgram.errors import BadInput
from gourmetgram.estimation import METHODS, THRESHOLD_METHODS, Window

OOD_PASS_RATE = 0.95  # in-distribution validation photos that must pass the OOD threshold
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: far beyond what a trained net needs


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of the true classes under ``softmax(logits / T)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the validation NLL of ``softmax(logits / T)``."""
    from scipy.optimize import minimize_scalar

    logits, labels = _checked(logits, labels)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def atc_threshold(scores: np.ndarray, accuracy: float) -> float:
    """ATC: the threshold t with share(score > t) = ``accuracy`` on the validation scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        raise BadInput("ATC needs validation scores")
    # the (1 - accuracy) quantile: that share lies at or below it, the accuracy share above
    return float(np.quantile(scores, 1.0 - accuracy, method="inverted_cdf"))


def class_caps(passed: np.ndarray, predicted: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Per class, the most a capped estimate counts for it: its share of the validation split, or
    the share of validation photos predicted as it that passed the threshold when that is more
    (a model that over-predicts a class in distribution already does so on validation). So on
    the validation split the capped estimate equals plain ATC's, the validation accuracy; only a
    class predicted more often than validation ever showed is cut."""
    n = len(passed)
    passed_share = np.bincount(np.asarray(predicted)[np.asarray(passed, dtype=bool)], minlength=len(prior)) / n
    return np.maximum(np.asarray(prior, dtype=np.float64), passed_share[:len(prior)])


def fit_calibration(logits: np.ndarray, labels: np.ndarray, ood_pass_rate: float = OOD_PASS_RATE,
                    fitted_on: str = "validation") -> Calibration:
    """Temperature, OOD threshold and ATC thresholds from labelled validation logits."""
    logits, labels = _checked(logits, labels)
    if not 0.5 <= ood_pass_rate <= 1.0:
        raise BadInput(f"ood_pass_rate must be within 0.5..1, got {ood_pass_rate}")
    temperature = fit_temperature(logits, labels)
    correct = logits.argmax(axis=1) == labels
    accuracy = float(correct.mean())
    prior = np.bincount(labels, minlength=logits.shape[1]) / len(labels)
    raw_conf = calibrated_probabilities(logits, 1.0).max(axis=1)
    scored = Calibration(temperature=temperature).score(logits)
    window = Window.of(scored)
    ood_threshold = float(np.quantile(scored.energy, ood_pass_rate, method="inverted_cdf"))
    thresholds, caps = {}, {}
    for name in THRESHOLD_METHODS:
        method = METHODS[name]
        values = window.score(method.score)  # type: ignore[arg-type]  # threshold methods have a score
        thresholds[name] = atc_threshold(values, accuracy)
        if method.capped:
            caps[name] = tuple(float(c) for c in class_caps(values > thresholds[name], window.predicted, prior))
    return Calibration(
        temperature=temperature, ood_threshold=ood_threshold, ood_pass_rate=ood_pass_rate,
        atc_thresholds=thresholds, class_prior=tuple(float(p) for p in prior), class_caps=caps,
        validation_accuracy=accuracy, n_validation=int(len(labels)),
        ece_before=expected_calibration_error(raw_conf, correct),
        ece_after=expected_calibration_error(scored.confidence, correct), fitted_on=fitted_on)


def ood_rates(calibration: Calibration, logits_by_set: dict[str, np.ndarray]) -> dict[str, dict]:
    """``{set: {"flagged": share out of distribution, "n": photos}}`` under the threshold."""
    out = {}
    for name, logits in logits_by_set.items():
        flagged = ~calibration.score(logits).in_distribution if len(logits) else np.array([])
        out[name] = {"flagged": float(flagged.mean()) if len(flagged) else None, "n": int(len(flagged))}
    return out


def _checked(logits: np.ndarray, labels: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (len(logits),) or not len(logits):
        raise BadInput(f"calibration needs (N, classes) logits and N labels, got {list(logits.shape)} "
                        f"and {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise BadInput(f"labels must be class indices in 0..{logits.shape[1] - 1}")
    return logits, labels.astype(np.int64)


def fit_validation_calibration(model, dataset_root: str | Path, batch_size: int = 64,
                               ood_pass_rate: float = OOD_PASS_RATE) -> Calibration:
    """:func:`fit_calibration` on ``<dataset>/validation`` with the in-process model (export and
    the offline evaluation call this, so the report describes the served bundle)."""
    from gourmetgram.constants import SPLITS

    folder = Path(dataset_root) / SPLITS[1]
    if not folder.is_dir():
        raise BadInput(f"{folder} does not exist: calibration is fitted on the validation split")
    model.eval()
    logits, labels = folder_logits(model, folder, model.spec.image_size, batch_size)
    return fit_calibration(logits, labels, ood_pass_rate, fitted_on=f"{SPLITS[1]} ({len(labels)} images)")


def folder_logits(model, folder: Path, image_size: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the in-process PyTorch model over ``folder/class_XX/*`` (serving's
    decode and preprocessing, like the evaluation suite)."""
    import torch
    from torch.utils.data import DataLoader

    from gourmetgram.data.dataset import ImageFolderDataset

    dataset = ImageFolderDataset(folder, image_size)
    if not len(dataset):
        raise BadInput(f"{folder} holds no images in class_XX folders")
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            out.append(model(x.to(device)).cpu().numpy())
    return np.concatenate(out), np.asarray(dataset.labels, dtype=np.int64)


def files_logits(model, paths: Sequence[Path], image_size: int, batch_size: int = 64) -> np.ndarray:
    """Logits of the in-process model for image files (serving's decode and preprocessing)."""
    import torch

    from gourmetgram.preprocessing import preprocess_bytes

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            x = np.stack([preprocess_bytes(Path(p).read_bytes(), image_size) for p in paths[start:start + batch_size]])
            out.append(model(torch.from_numpy(x).to(device)).cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, model.spec.num_classes), np.float32)


IN_DISTRIBUTION_SET = "evaluation (in distribution)"


@dataclasses.dataclass(frozen=True)
class CalibrationReport:
    """What the offline report says about the calibration the export will ship."""

    calibration: Calibration
    n_evaluation: int
    ece_before: float  # on the evaluation split, uncalibrated softmax
    ece_after: float  # on the evaluation split, softmax(logits / T)
    reliability_before: list[ReliabilityBin]
    reliability_after: list[ReliabilityBin]
    ood: dict[str, dict]  # set -> {"flagged": share, "n": images}; the evaluation split first

    def to_dict(self) -> dict:
        return {"temperature": self.calibration.temperature, "fitted_on": self.calibration.fitted_on,
                "n_evaluation": self.n_evaluation, "ece_bins": ECE_BINS,
                "ece_before": self.ece_before, "ece_after": self.ece_after,
                "reliability_before": [dataclasses.asdict(b) for b in self.reliability_before],
                "reliability_after": [dataclasses.asdict(b) for b in self.reliability_after],
                "ood_threshold": self.calibration.to_dict()["ood_threshold"],
                "ood_pass_rate": self.calibration.ood_pass_rate, "ood": self.ood}


def calibration_report(model, dataset_root: Path, eval_logits: np.ndarray, eval_labels: np.ndarray,
                       ood_logits: dict[str, np.ndarray], batch_size: int = 64,
                       ood_pass_rate: float = OOD_PASS_RATE) -> CalibrationReport:
    """Fit on validation (as the export does), measure on the evaluation split and OOD sets."""
    calibration = fit_validation_calibration(model, dataset_root, batch_size, ood_pass_rate)
    correct = np.asarray(eval_logits).argmax(axis=1) == np.asarray(eval_labels)
    before = calibrated_probabilities(eval_logits, 1.0).max(axis=1)
    after = calibration.score(eval_logits).confidence
    return CalibrationReport(
        calibration, int(len(eval_labels)),
        expected_calibration_error(before, correct), expected_calibration_error(after, correct),
        reliability_table(before, correct), reliability_table(after, correct),
        ood_rates(calibration, {IN_DISTRIBUTION_SET: np.asarray(eval_logits), **ood_logits}))


def report_metrics(report: CalibrationReport) -> dict[str, float]:
    """The report's figures as MLflow metrics."""
    from gourmetgram.evaluation.metrics import metric_key

    out = {"eval/calibration/temperature": report.calibration.temperature,
           "eval/calibration/ece_before": report.ece_before, "eval/calibration/ece_after": report.ece_after}
    for name, rate in report.ood.items():
        if rate["flagged"] is not None:
            key = "in_distribution" if name == IN_DISTRIBUTION_SET else metric_key(name)
            out[f"eval/ood/{key}/flagged"] = rate["flagged"]
    return out


def format_calibration(doc: dict) -> list[str]:
    """The report's calibration section (from :meth:`CalibrationReport.to_dict`)."""
    def f(x) -> str:
        return "   -" if x is None else f"{x:.3f}"

    lines = [f"Calibration (temperature scaling fitted on {doc['fitted_on']}; ECE with {doc['ece_bins']} bins "
             f"on the evaluation set, {doc['n_evaluation']} images)",
             f"  temperature {doc['temperature']:.3f}   ECE before {doc['ece_before']:.3f}   "
             f"after {doc['ece_after']:.3f}",
             f"  {'confidence bin':<15} {'images':>6} {'conf':>6} {'acc':>6}   {'images':>6} {'conf':>6} {'acc':>6}",
             f"  {'':<15} {'before':>20}   {'after':>20}"]
    for b, a in zip(doc["reliability_before"], doc["reliability_after"]):
        if b["count"] or a["count"]:
            lines.append(f"  {b['lower']:.2f}-{b['upper']:.2f}      {b['count']:>6} {f(b['confidence']):>6} "
                         f"{f(b['accuracy']):>6}   {a['count']:>6} {f(a['confidence']):>6} {f(a['accuracy']):>6}")
    threshold = doc.get("ood_threshold")
    lines += ["", f"Out-of-distribution threshold: energy score <= "
                  f"{'none' if threshold is None else f'{threshold:.3f}'} "
                  f"({doc['ood_pass_rate']:.0%} of the validation photos pass)",
              f"  {'set':<30} {'images':>6} {'flagged':>8}"]
    for name, rate in doc["ood"].items():
        lines.append(f"  {name:<30} {rate['n']:>6} {f(rate['flagged']):>8}")
    return lines
