"""Class names: the Food-11 list, and reading/writing a dataset's own names."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gourmetgram.constants import CLASS_NAMES_FILE
from gourmetgram.errors import DatasetError

# Food-11 in index order: class_00 .. class_10.
FOOD11_CLASSES = (
    "Bread",
    "Dairy product",
    "Dessert",
    "Egg",
    "Fried food",
    "Meat",
    "Noodles/Pasta",
    "Rice",
    "Seafood",
    "Soup",
    "Vegetable/Fruit",
)


def class_dir_name(index: int) -> str:
    return f"class_{index:02d}"


def write_class_names(root: Path, names: Sequence[str]) -> Path:
    path = Path(root) / CLASS_NAMES_FILE
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def read_class_names(root: Path, num_classes: int) -> list[str]:
    """The dataset's class names: ``classes.txt`` if present, else Food-11's."""
    path = Path(root) / CLASS_NAMES_FILE
    if path.exists():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) != num_classes:
            raise DatasetError(
                f"{path} names {len(names)} classes but the dataset has {num_classes} "
                f"class_XX folders; make them agree"
            )
        if len(set(names)) != len(names):
            raise DatasetError(f"{path} has duplicate class names")
        return names
    if num_classes == len(FOOD11_CLASSES):
        return list(FOOD11_CLASSES)
    raise DatasetError(
        f"{root} has {num_classes} classes and no {CLASS_NAMES_FILE}; add one with a "
        f"class name per line, in class_XX order"
    )
