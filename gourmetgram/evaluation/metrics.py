"""Standard classification metrics and the confusion-matrix picture (NumPy + matplotlib only)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    truth, pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(truth == pred)) if len(truth) else float("nan")


def per_class_accuracy(cm: np.ndarray) -> list[float]:
    """Recall of each class (the course's per-class accuracy); NaN for a class with no images."""
    support = cm.sum(axis=1)
    return [float(cm[i, i] / support[i]) if support[i] else float("nan") for i in range(len(cm))]


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that have images."""
    scores = []
    for i in range(len(cm)):
        support, predicted, tp = cm[i].sum(), cm[:, i].sum(), cm[i, i]
        if not support:
            continue
        precision = tp / predicted if predicted else 0.0
        recall = tp / support
        scores.append(2 * precision * recall / (precision + recall) if tp else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def metric_key(name: str) -> str:
    """A class or set name as one MLflow key segment: ``Noodles/Pasta`` -> ``noodles_pasta``."""
    key = re.sub(r"[^a-z0-9_.-]+", "_", name.strip().lower()).strip("_")
    return key or "unnamed"


def is_number(value: float) -> bool:
    return value is not None and not math.isnan(value)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: Path,
                          title: str = "Confusion matrix (evaluation set)") -> Path:
    """Save the confusion matrix as a PNG: row-normalised colours, counts written in the cells.

    Uses matplotlib's object API with the Agg canvas, so no display and no global backend change.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(class_names)
    support = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, support, out=np.zeros(cm.shape, float), where=support > 0)
    side = max(4.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(side + 1, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
