"""The embedded demo dataset: real handwritten digits from scikit-learn, no download.

scikit-learn ships 1,797 real 8x8 handwritten digits (UCI). Each is rendered as a
colour photo-like JPEG (the glyph in a random ink colour on a textured, randomly tinted
background, with a small random shift and scale) and written in the Food-11 layout with
its own ``classes.txt``. The same rendering makes the evaluation suite's extra sets
(see :mod:`gourmetgram.evaluation.demo_sets`). Nothing in the code depends on it.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from gourmetgram.classes import class_dir_name, write_class_names
from gourmetgram.constants import SPLITS

DEMO_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEMO_IMAGE_SIZE = 64  # pixels on disk; the model config picks its own input size
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _load

    digits = _load()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(int)


def glyph_mask(digit: np.ndarray, size: int) -> Image.Image:
    """8x8 intensities in [0, 1] -> a smooth ``size`` x ``size`` alpha mask."""
    mask = Image.fromarray((digit * 255).astype(np.uint8), mode="L")
    return mask.resize((size, size), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(size / 64))


def textured_background(rng: random.Random, size: int, dark: bool | None = None) -> Image.Image:
    """A tinted background with low-frequency texture (a plate, a table)."""
    if dark is None:
        dark = rng.random() < 0.5
    base = np.array([rng.uniform(0, 90) if dark else rng.uniform(150, 255) for _ in range(3)], np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 18, (size // 8, size // 8, 3))
    texture = np.asarray(
        Image.fromarray(np.clip(noise + 128, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC),
        np.float32,
    ) - 128
    return Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8), mode="RGB")


def ink_colour(rng: random.Random, background: Image.Image, contrast: float = 1.0) -> tuple[int, int, int]:
    """An ink colour that stands out from the background by ``contrast`` (0..1)."""
    mean = np.asarray(background, np.float32).mean()
    if mean > 127:
        level = 127 - 120 * contrast
    else:
        level = 128 + 120 * contrast
    r, g, b = (int(np.clip(level + rng.uniform(-25, 25), 0, 255)) for _ in range(3))
    return r, g, b


def render_digit(digit: np.ndarray, rng: random.Random, size: int = DEMO_IMAGE_SIZE,
                 background: Image.Image | None = None, scale: float | None = None,
                 contrast: float = 1.0) -> Image.Image:
    """Paste the digit glyph in a contrasting ink on a background, with jitter."""
    background = background.copy() if background is not None else textured_background(rng, size)
    scale = scale if scale is not None else rng.uniform(0.7, 0.95)
    glyph = int(size * scale)
    mask = glyph_mask(digit, glyph)
    ink = Image.new("RGB", (glyph, glyph), ink_colour(rng, background, contrast))
    x = rng.randint(0, size - glyph)
    y = rng.randint(0, size - glyph)
    background.paste(ink, (x, y), mask)
    return background


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
        from gourmetgram.evaluation.demo_sets import build_demo_eval_sets

        build_demo_eval_sets(root, images, labels, split_indices(labels, seed)[SPLITS[2]], seed)
    return root
