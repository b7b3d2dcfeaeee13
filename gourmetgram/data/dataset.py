"""PyTorch dataset over a Food-11-layout folder, using the shared preprocessing."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler, get_worker_info

from gourmetgram.data.layout import list_images
from gourmetgram.preprocessing import decode_image, preprocess


class ImageFolderDataset(Dataset):
    """(image tensor, class index) pairs from ``folder/class_XX/*``.

    Evaluation uses exactly :func:`gourmetgram.preprocessing.preprocess`; training may add
    a horizontal flip and a random crop on the decoded image first (from the config).

    The augmentation RNG lives on the object. In the main process (``num_workers: 0``) it
    advances from epoch to epoch; a DataLoader worker gets a pickled COPY of it at every
    epoch, so without :func:`seed_worker` every epoch (and every worker) would repeat the
    same draws. Build training loaders with :func:`train_loader`.
    """

    def __init__(self, folder: str | Path, image_size: int, hflip: bool = False,
                 crop_scale: float = 1.0, seed: int = 0):
        self.folder = Path(folder)
        self.items = list_images(self.folder)
        self.image_size = image_size
        self.hflip = hflip
        self.crop_scale = crop_scale
        self.rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def _augment(self, image: Image.Image) -> Image.Image:
        if self.hflip and self.rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if self.crop_scale < 1.0:
            w, h = image.size
            s = self.rng.uniform(self.crop_scale, 1.0)
            cw, ch = max(1, int(w * s)), max(1, int(h * s))
            x, y = self.rng.randint(0, w - cw), self.rng.randint(0, h - ch)
            image = image.crop((x, y, x + cw, y + ch))
        return image

    def load(self, index: int) -> np.ndarray:
        path, _ = self.items[index]
        image = decode_image(path.read_bytes(), target_size=self.image_size)
        if self.hflip or self.crop_scale < 1.0:
            image = self._augment(image)
        return preprocess(image, self.image_size)

    def __getitem__(self, index: int):
        return torch.from_numpy(self.load(index)), self.items[index][1]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed this worker's copy of the dataset's RNG.

    torch seeds each worker with ``base_seed + worker_id``, and draws ``base_seed`` from the
    loader's generator once per epoch (per iterator): so the draws differ between epochs and
    between workers, and a run with the same generator seed repeats exactly.
    """
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(info.seed)


def train_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0,
                 drop_last: bool = False, weights: list[float] | None = None) -> DataLoader:
    """The training DataLoader: shuffled by a seeded generator, workers reseeded per epoch.
    With ``weights`` an epoch is ``len(dataset)`` draws with replacement, each item drawn in
    proportion to its weight (:func:`gourmetgram.continual.production_weights`)."""
    generator = torch.Generator().manual_seed(seed)
    sampler = (WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
               if weights is not None else None)
    return DataLoader(dataset, batch_size, shuffle=sampler is None, sampler=sampler, generator=generator,
                      num_workers=num_workers, drop_last=drop_last,
                      worker_init_fn=seed_worker if num_workers > 0 else None)
