"""Training augmentation draws: new ones every epoch and in every DataLoader worker, and the
same ones again for the same seed.

Every image in the folder is the same picture, so what the loader yields depends only on
the sequence of random draws (the shuffle order cannot hide a repeated sequence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gourmetgram.data.dataset import ImageFolderDataset, train_loader


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aug")
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    for c in range(2):
        (root / f"class_{c:02d}").mkdir()
        for i in range(4):
            Image.fromarray(pixels).save(root / f"class_{c:02d}" / f"{i}.png")
    return root


def _epochs(folder: Path, seed: int, workers: int, epochs: int = 2) -> list[list[torch.Tensor]]:
    """Per epoch, the batches in the order the loader yields them."""
    dataset = ImageFolderDataset(folder, 32, hflip=True, crop_scale=0.5, seed=seed)
    loader = train_loader(dataset, batch_size=2, seed=seed, num_workers=workers)
    return [[x for x, _y in loader] for _ in range(epochs)]


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_draw_new_augmentations_and_runs_repeat(folder, workers):
    first, second = _epochs(folder, seed=3, workers=workers)
    assert len(first) == len(second) == 4
    # A new sequence of draws per epoch (with workers the old code repeated it exactly) ...
    assert not torch.equal(torch.cat(first), torch.cat(second))
    if workers:
        # ... and per worker (batch 0 came from worker 0, batch 1 from worker 1).
        assert not torch.equal(first[0], first[1])
    # The same seed reproduces the whole run, epoch by epoch.
    again = _epochs(folder, seed=3, workers=workers)
    assert all(torch.equal(torch.cat(a), torch.cat(b)) for a, b in zip((first, second), again))
