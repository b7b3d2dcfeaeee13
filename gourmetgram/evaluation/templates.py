"""Template tests: compose a food cut-out on a background, with or without an extra object.

The course's ``compose_image(food, bg, extra)`` check, made measurable:

* **invariance**: changing the background or adding an extra object (a fork) should not
  change the label. Per food, the share of its compositions that get the food's most
  common prediction.
* **sensitivity**: swapping the food for one of another class (same background, same
  extra) should change the label. The share of such pairs whose predictions differ.
* **accuracy**: the share of compositions predicted as the food's own class (the course's
  pass ratio).

A model that always says "Dessert" is perfectly invariant and not sensitive at all; one
that reads the fork is sensitive and not invariant. Both numbers are needed.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Sequence

from PIL import Image

from gourmetgram.data.layout import CLASS_DIR, IMAGE_SUFFIXES
from gourmetgram.errors import ConfigError

FOOD_SCALE = 0.8  # longer side of the food / shorter side of the background
EXTRA_SCALE = 0.33  # longer side of the extra / shorter side of the background
FOOD_DIR = re.compile(r"^(\d{2})$")  # the course's foods/05/ naming


def _fit(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


def compose_image(food: Image.Image, background: Image.Image, extra: Image.Image | None = None,
                  food_scale: float = FOOD_SCALE, extra_scale: float = EXTRA_SCALE) -> Image.Image:
    """The food cut-out centred on the background, the extra (if any) in the bottom-right corner.

    Foods and extras are RGBA: their alpha channel is the paste mask. Returns RGB at the
    background's size.
    """
    canvas = background.convert("RGB")
    short = min(canvas.size)
    food = _fit(food.convert("RGBA"), int(short * food_scale))
    canvas.paste(food, ((canvas.width - food.width) // 2, (canvas.height - food.height) // 2), food)
    if extra is not None:
        extra = _fit(extra.convert("RGBA"), max(1, int(short * extra_scale)))
        canvas.paste(extra, (canvas.width - extra.width, canvas.height - extra.height), extra)
    return canvas


@dataclasses.dataclass(frozen=True)
class Composition:
    """One template case: which food (and its class) on which background with which extra."""

    food_class: int
    food: str
    background: str
    extra: str | None


@dataclasses.dataclass
class TemplateLibrary:
    backgrounds: list[Path]
    extras: list[Path]
    foods: dict[int, list[Path]]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _first_dir(folder: Path, *names: str) -> Path:
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    raise ConfigError(f"template folder {folder} lacks {names[0]}/ "
                      f"(expected backgrounds/, extras/ and foods/class_XX/)")


def load_library(folder: Path) -> TemplateLibrary:
    """Read ``backgrounds/``, ``extras/`` (optional) and ``foods/class_XX/``; ConfigError if unusable.

    The course's own layout (``background/``, ``food/05/``) is accepted as well.
    """
    if not folder.is_dir():
        raise ConfigError(f"evaluation.templates.path: template folder {folder} does not exist")
    backgrounds_dir = _first_dir(folder, "backgrounds", "background")
    foods_dir = _first_dir(folder, "foods", "food")
    extras_dir = folder / "extras" if (folder / "extras").is_dir() else folder / "extra"
    backgrounds = _images(backgrounds_dir)
    if not backgrounds:
        raise ConfigError(f"{backgrounds_dir} holds no .png/.jpg backgrounds")
    extras = _images(extras_dir) if extras_dir.is_dir() else []
    foods: dict[int, list[Path]] = {}
    for class_dir in sorted(p for p in foods_dir.iterdir() if p.is_dir()):
        match = CLASS_DIR.match(class_dir.name) or FOOD_DIR.match(class_dir.name)
        if match and _images(class_dir):
            foods[int(match.group(1))] = _images(class_dir)
    if not foods:
        raise ConfigError(f"{foods_dir} holds no class_XX folders with food images")
    return TemplateLibrary(backgrounds, extras, foods)


def plan_compositions(library: TemplateLibrary, foods_per_class: int, seed: int) -> list[Composition]:
    """Pick ``foods_per_class`` foods per class (seeded) and cross each with every background x extra.

    The plain composition (first background, no extra) of each food comes first.
    """
    rng = random.Random(seed)
    extras: list[Path | None] = [None, *library.extras]
    plan = []
    for cls in sorted(library.foods):
        paths = library.foods[cls]
        chosen = sorted(rng.sample(paths, min(foods_per_class, len(paths))))
        for food in chosen:
            for bg in library.backgrounds:
                for extra in extras:
                    plan.append(Composition(cls, str(food), str(bg), str(extra) if extra else None))
    return plan


def render(compositions: Sequence[Composition]) -> list[Image.Image]:
    """The composed images, each file opened once."""
    cache: dict[str, Image.Image] = {}

    def load(path: str) -> Image.Image:
        if path not in cache:
            with Image.open(path) as im:
                cache[path] = im.copy()
        return cache[path]

    return [compose_image(load(c.food), load(c.background), load(c.extra) if c.extra else None)
            for c in compositions]


@dataclasses.dataclass
class TemplateScores:
    accuracy: float
    invariance: float
    sensitivity: float
    n_compositions: int
    n_swaps: int
    failures: list[str]  # "<food> on <background> + <extra>: predicted <x>, expected <y>"


def score_templates(compositions: Sequence[Composition], predictions: Sequence[int],
                    class_names: Sequence[str] | None = None) -> TemplateScores:
    """Accuracy, invariance and sensitivity of predictions on the compositions (same order)."""
    if len(compositions) != len(predictions) or not compositions:
        raise ValueError("need one prediction per composition, and at least one composition")
    name = (lambda i: class_names[i] if 0 <= i < len(class_names) else str(i)) if class_names else str
    pred = {c: int(p) for c, p in zip(compositions, predictions)}

    correct = sum(pred[c] == c.food_class for c in compositions)
    failures = [
        f"{Path(c.food).parent.name}/{Path(c.food).name} on {Path(c.background).name}"
        f" + {Path(c.extra).name if c.extra else 'nothing'}: predicted {name(pred[c])}, expected {name(c.food_class)}"
        for c in compositions if pred[c] != c.food_class
    ]

    by_food: dict[str, list[int]] = {}
    for c in compositions:
        by_food.setdefault(c.food, []).append(pred[c])
    agree = sum(Counter(labels).most_common(1)[0][1] for labels in by_food.values())

    by_scene: dict[tuple[str, str | None], list[Composition]] = {}
    for c in compositions:
        by_scene.setdefault((c.background, c.extra), []).append(c)
    swaps = changed = 0
    for scene in by_scene.values():
        for a, b in combinations(scene, 2):
            if a.food_class != b.food_class:
                swaps += 1
                changed += pred[a] != pred[b]

    n = len(compositions)
    return TemplateScores(
        accuracy=correct / n,
        invariance=agree / n,
        sensitivity=changed / swaps if swaps else float("nan"),
        n_compositions=n,
        n_swaps=swaps,
        failures=failures,
    )

