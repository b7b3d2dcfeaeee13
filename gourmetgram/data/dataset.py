"""PyTorch dataset over a Food-11-layout folder, using the shared preprocessing."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from gourmetgram.data.layout import list_images
from gourmetgram.preprocessing import decode_image, preprocess


class ImageFolderDataset(Dataset):
    """(image tensor, class index) pairs from ``folder/class_XX/*``.

    Evaluation uses exactly :func:`gourmetgram.preprocessing.preprocess`; training may add
    a horizontal flip and a random crop on the decoded image first (from the config).
    """

    def __init__(self, folder: str | Path, image_size: int, hflip: bool = False,
                 crop_scale: float = 1.0, seed: int = 0):
        self.folder = Path(folder)
        self.items = list_images(self.folder)
        self.image_size = image_size
        self.hflip = hflip
        self.crop_scale = crop_scale
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
