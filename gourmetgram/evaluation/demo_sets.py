"""The demo dataset's extra evaluation sets: slices, known failure modes, templates.

They mirror the course's sets for Food-11 (``indian_dessert`` slice, ``cake_looks_like``
failure mode, ``templates/``), rendered from the held-out evaluation digits only, so
nothing seen in training leaks in. Layout under ``<root>/eval_sets/``::

    slices/dark_background/class_XX/*.jpg     every digit on a dark plate
    slices/small_digits/class_XX/*.jpg        every digit smaller than any seen in training
    failure_modes/faint_eights/*.jpg          low-contrast eights (expected class 8)
    failure_modes/bold_ones/*.jpg             thick-stroked ones (expected class 1)
    templates/backgrounds/*.png               empty light plates/tables (RGB)
    templates/extras/*.png                    a fork, a stick, a crumb blob (RGBA)
    templates/foods/class_XX/*.png            digit glyphs cut out (RGBA)
    ood/blank_plates/*.jpg                    plates and tables with nothing on them
    ood/noise/*.jpg                           pixel noise, no picture at all
    ood/symbols/*.jpg                         letters and symbols drawn like the digits

The ``ood/`` sets are out of distribution: no class is right for them, and the bundle's OOD
threshold (:mod:`gourmetgram.evaluation.calibration`) should flag them.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gourmetgram.classes import class_dir_name
from gourmetgram.data.digits import DEMO_IMAGE_SIZE, glyph_mask, ink_colour, render_digit, textured_background
from gourmetgram.evaluation.templates import FOOD_SCALE

EVAL_SETS_DIR = "eval_sets"
SLICE_PER_CLASS = 10
FAILURE_MODE_SIZE = 30
TEMPLATE_FOODS_PER_CLASS = 2
TEMPLATE_BACKGROUNDS = 4
OOD_DIR = "ood"
OOD_SET_SIZE = 60
# Not digits, drawn with the digits' look (an 8x8 glyph, ink on a plate): the hardest OOD set.
SYMBOLS = "AKMWXHE#@&%?+"


def _by_class(labels: np.ndarray, eval_indices: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i in sorted(eval_indices):
        out.setdefault(int(labels[i]), []).append(i)
    return out


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        image.save(path)
    else:
        image.save(path, quality=92)


def bold(digit: np.ndarray) -> np.ndarray:
    """Thicker strokes: the glyph smeared one cell right and down (a felt-tip pen)."""
    right = np.zeros_like(digit)
    right[:, 1:] = digit[:, :-1]
    down = np.zeros_like(digit)
    down[1:, :] = digit[:-1, :]
    return np.clip(np.maximum.reduce([digit, right, down]), 0, 1)


def _slices(out: Path, images: np.ndarray, by_class: dict[int, list[int]], rng: random.Random) -> None:
    size = DEMO_IMAGE_SIZE
    for cls, indices in by_class.items():
        for i in indices[:SLICE_PER_CLASS]:
            dark = textured_background(rng, size, dark=True)
            _save(render_digit(images[i], rng, background=dark),
                  out / "slices" / "dark_background" / class_dir_name(cls) / f"{i:04d}.jpg")
            _save(render_digit(images[i], rng, scale=rng.uniform(0.6, 0.7)),
                  out / "slices" / "small_digits" / class_dir_name(cls) / f"{i:04d}.jpg")


def _failure_modes(out: Path, images: np.ndarray, by_class: dict[int, list[int]], rng: random.Random) -> None:
    for i in by_class.get(8, [])[:FAILURE_MODE_SIZE]:
        _save(render_digit(images[i], rng, contrast=rng.uniform(0.3, 0.4)),
              out / "failure_modes" / "faint_eights" / f"{i:04d}.jpg")
    for i in by_class.get(1, [])[:FAILURE_MODE_SIZE]:
        _save(render_digit(bold(images[i]), rng), out / "failure_modes" / "bold_ones" / f"{i:04d}.jpg")


def _extras(size: int) -> dict[str, Image.Image]:
    """Small RGBA objects that may end up next to the food: cutlery, crumbs."""
    grey, brown = (110, 110, 120, 255), (120, 80, 40, 255)
    fork = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(fork)
    w = max(1, size // 12)
    d.line([(size // 2, size // 3), (size // 2, size - 1)], fill=grey, width=w)
    d.line([(size // 4, size // 3), (3 * size // 4, size // 3)], fill=grey, width=w)
    for x in (size // 4, size // 2, 3 * size // 4):
        d.line([(x, 0), (x, size // 3)], fill=grey, width=w)
    stick = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(stick).line([(1, size - 2), (size - 2, 1)], fill=brown, width=max(1, size // 8))
    blob = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(blob).ellipse([size // 5, size // 4, 4 * size // 5, 3 * size // 4], fill=(150, 60, 40, 255))
    return {"fork": fork, "stick": stick, "blob": blob}


def _templates(out: Path, images: np.ndarray, by_class: dict[int, list[int]], rng: random.Random) -> None:
    size = DEMO_IMAGE_SIZE
    folder = out / "templates"
    backgrounds = []
    for k in range(TEMPLATE_BACKGROUNDS):
        bg = textured_background(rng, size, dark=False)  # foods carry dark ink
        backgrounds.append(bg)
        _save(bg, folder / "backgrounds" / f"plate_{k + 1}.png")
    for name, extra in _extras(size // 3).items():
        _save(extra, folder / "extras" / f"{name}.png")
    glyph = int(size * FOOD_SCALE)
    for cls, indices in by_class.items():
        # The last evaluation digits of each class: disjoint from the slices' first ones.
        for i in indices[-TEMPLATE_FOODS_PER_CLASS:]:
            ink = ink_colour(rng, backgrounds[0])
            food = Image.new("RGBA", (glyph, glyph), ink + (255,))
            food.putalpha(glyph_mask(images[i], glyph))
            _save(food, folder / "foods" / class_dir_name(cls) / f"{i:04d}.png")


def symbol_glyph(symbol: str, rng: random.Random) -> np.ndarray:
    """A letter or symbol as an 8x8 intensity grid in [0, 1], like the sklearn digits."""
    canvas = Image.new("L", (32, 32), 0)
    font = ImageFont.load_default(size=rng.randint(24, 30))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), symbol, font=font)
    draw.text(((32 - (right - left)) / 2 - left, (32 - (bottom - top)) / 2 - top), symbol, fill=255, font=font)
    small = np.asarray(canvas.resize((8, 8), Image.Resampling.BOX), np.float32) / 255.0
    return np.clip(small / max(small.max(), 1e-6), 0, 1)


def _ood(out: Path, rng: random.Random) -> None:
    size = DEMO_IMAGE_SIZE
    folder = out / OOD_DIR
    for k in range(OOD_SET_SIZE):
        _save(textured_background(rng, size), folder / "blank_plates" / f"plate_{k:03d}.jpg")
        pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size, size, 3), dtype=np.uint8)
        _save(Image.fromarray(pixels, mode="RGB"), folder / "noise" / f"noise_{k:03d}.jpg")
        symbol = SYMBOLS[k % len(SYMBOLS)]
        _save(render_digit(symbol_glyph(symbol, rng), rng), folder / "symbols" / f"symbol_{k:03d}.jpg")


def build_demo_eval_sets(root: Path, images: np.ndarray, labels: np.ndarray,
                         eval_indices: list[int], seed: int) -> None:
    """Write ``<root>/eval_sets/`` from the evaluation split's digits (about 1 s)."""
    out = Path(root) / EVAL_SETS_DIR
    if out.exists():
        shutil.rmtree(out)
    by_class = _by_class(labels, eval_indices)
    _slices(out, images, by_class, random.Random(seed * 7919 + 1))
    _failure_modes(out, images, by_class, random.Random(seed * 7919 + 2))
    _templates(out, images, by_class, random.Random(seed * 7919 + 3))
    _ood(out, random.Random(seed * 7919 + 4))
