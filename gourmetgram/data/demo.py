"""The embedded demo dataset: real handwritten digits from scikit-learn, no download.

scikit-learn ships 1,797 real 8x8 handwritten digits (UCI). Each is rendered as a
colour photo-like JPEG (the glyph in a random ink colour on a textured, randomly tinted
background, with a small random shift and scale) and written in the Food-11 layout with
its own ``classes.txt``. The same rendering makes the evaluation suite's extra sets
(see :mod:`gourmetgram.evaluation.demo_sets`); it lives in :mod:`gourmetgram.data.digits`,
which both import. Nothing in the code depends on it.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np

from gourmetgram.classes import class_dir_name, write_class_names
from gourmetgram.constants import SPLITS
from gourmetgram.data.digits import load_digits, render_digit
from gourmetgram.evaluation.demo_sets import build_demo_eval_sets

DEMO_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


def split_indices(labels: np.ndarray, seed: int) -> dict[str, list[int]]:
    """Stratified split into training/validation/evaluation."""
    rng = random.Random(seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cls in sorted(set(labels.tolist())):
        idx = [i for i, y in enumerate(labels) if y == cls]
        rng.shuffle(idx)
        n_train = int(len(idx) * SPLIT_FRACTIONS[0])
        n_val = int(len(idx) * SPLIT_FRACTIONS[1])
        out[SPLITS[0]] += idx[:n_train]
        out[SPLITS[1]] += idx[n_train:n_train + n_val]
        out[SPLITS[2]] += idx[n_train + n_val:]
    return out


def build_demo_dataset(root: str | Path, seed: int = 0, with_eval_sets: bool = True) -> Path:
    """Write the demo dataset (and, by default, its evaluation sets) under ``root``."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    images, labels = load_digits()
    rng = random.Random(seed)
    for split, indices in split_indices(labels, seed).items():
        for i in indices:
            folder = root / split / class_dir_name(int(labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            render_digit(images[i], rng).save(folder / f"{i:04d}.jpg", quality=92)
    write_class_names(root, DEMO_CLASSES)
    if with_eval_sets:
        build_demo_eval_sets(root, images, labels, split_indices(labels, seed)[SPLITS[2]], seed)
    return root
