"""Validate a dataset in the Food-11 layout and fingerprint it.

``<root>/{training,validation,evaluation}/class_XX/*.{jpg,jpeg,png}`` plus class names
(``classes.txt``, or Food-11's own names when there are 11 classes). Every problem is a
:class:`DatasetError` that names the file or folder to fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from tqdm import tqdm

from gourmetgram.classes import read_class_names
from gourmetgram.constants import SPLITS
from gourmetgram.errors import DatasetError
from gourmetgram.preprocessing import InvalidImageError, decode_image

CLASS_DIR = re.compile(r"^class_(\d{2})$")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
IGNORED_NAMES = {".DS_Store", "Thumbs.db"}


@dataclasses.dataclass
class DatasetReport:
    """What validation found: counts per split and class, and a content fingerprint."""

    root: str
    class_names: list[str]
    counts: dict[str, list[int]]  # split -> images per class
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def total(self, split: str) -> int:
        return sum(self.counts[split])

    def summary(self) -> str:
        parts = [f"{s}={self.total(s)}" for s in SPLITS]
        return f"{self.num_classes} classes, " + ", ".join(parts) + f", sha256 {self.fingerprint[:12]}"


def list_images(folder: Path) -> list[tuple[Path, int]]:
    """(path, class index) for every image under ``folder/class_XX/``, sorted."""
    items = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        match = CLASS_DIR.match(class_dir.name)
        if not match:
            continue
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((path, int(match.group(1))))
    return items


def _class_dirs(split_dir: Path) -> dict[int, Path]:
    dirs: dict[int, Path] = {}
    for p in sorted(split_dir.iterdir()):
        if p.name in IGNORED_NAMES:
            continue
        if not p.is_dir():
            raise DatasetError(
                f"{p} is a file directly under the split folder; images belong in "
                f"{split_dir}/class_XX/ folders"
            )
        match = CLASS_DIR.match(p.name)
        if not match:
            raise DatasetError(f"{p} is not a class folder; name class folders class_00, class_01, ...")
        dirs[int(match.group(1))] = p
    return dirs


def validate_dataset(root: str | Path, check_images: bool = True, progress: bool = True) -> DatasetReport:
    """Check the layout, class sets and every image; return counts and a fingerprint."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DatasetError(
            f"dataset {root} is missing split folder(s) {', '.join(missing)}; "
            f"expected {', '.join(SPLITS)}"
        )
    per_split = {s: _class_dirs(root / s) for s in SPLITS}
    reference = set(per_split[SPLITS[0]])
    if not reference:
        raise DatasetError(f"{root / SPLITS[0]} has no class_XX folders")
    for split, dirs in per_split.items():
        if set(dirs) != reference:
            only_here = sorted(set(dirs) - reference)
            absent = sorted(reference - set(dirs))
            raise DatasetError(
                f"class folders differ between splits: {split} "
                + (f"has extra {['class_%02d' % i for i in only_here]} " if only_here else "")
                + (f"lacks {['class_%02d' % i for i in absent]} " if absent else "")
                + f"compared with {SPLITS[0]}"
            )
    expected = list(range(len(reference)))
    if sorted(reference) != expected:
        raise DatasetError(
            f"class folders must be numbered class_00..class_{len(reference) - 1:02d} without gaps; "
            f"found {['class_%02d' % i for i in sorted(reference)]}"
        )
    class_names = read_class_names(root, len(reference))

    counts: dict[str, list[int]] = {}
    files: list[Path] = []
    for split in SPLITS:
        counts[split] = []
        for index in expected:
            class_dir = per_split[split][index]
            entries = [p for p in sorted(class_dir.iterdir()) if p.name not in IGNORED_NAMES]
            non_images = [p for p in entries if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES]
            if non_images:
                shown = ", ".join(str(p) for p in non_images[:5])
                raise DatasetError(
                    f"{len(non_images)} non-image entr{'y' if len(non_images) == 1 else 'ies'} in "
                    f"{class_dir} (only .jpg/.jpeg/.png are allowed): {shown}"
                )
            if not entries:
                raise DatasetError(f"class folder {class_dir} is empty")
            counts[split].append(len(entries))
            files.extend(entries)

    digest = hashlib.sha256()
    bad: list[str] = []
    for path in tqdm(files, desc="validating images", unit="img", disable=None if progress else True, leave=False):
        data = path.read_bytes()
        digest.update(str(path.relative_to(root)).encode())
        digest.update(hashlib.sha256(data).digest())
        if check_images:
            try:
                decode_image(data)
            except InvalidImageError as exc:
                bad.append(f"{path}: {exc}")
    if bad:
        shown = "\n  ".join(bad[:10])
        raise DatasetError(f"{len(bad)} unreadable image(s):\n  {shown}")
    return DatasetReport(str(root), class_names, counts, digest.hexdigest())
