"""Handwritten digits rendered as colour photos: the embedded demo's images.

scikit-learn ships 1,797 real 8x8 handwritten digits (UCI). :func:`render_digit` paints one
in a random ink colour on a textured, randomly tinted background, with a small random shift
and scale. The demo dataset (:mod:`gourmetgram.data.demo`) and its evaluation sets
(:mod:`gourmetgram.evaluation.demo_sets`) are both drawn with it.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter

DEMO_IMAGE_SIZE = 64  # pixels on disk; the model config picks its own input size


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
