"""A fine-tune draws the labelled production photos as ``train.fine_tune.production_share`` of
each epoch: a few dozen fresh labels among a thousand base images barely move the model otherwise
(the demo's retrain was rejected for it on another machine; benchmarks/continual_training.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gourmetgram.config import load_config, override
from gourmetgram.continual import parent_from_checkpoint, production_weights
from gourmetgram.data.dataset import ImageFolderDataset, train_loader
from gourmetgram.data.merge import MERGED_LINEAGE
from gourmetgram.errors import BadInput

BASE, PRODUCTION = 18, 2  # training images per kind


@pytest.fixture
def merged(tmp_path) -> Path:
    """A merged dataset's training split: base images and two production photos, named by the lineage."""
    rng = np.random.default_rng(0)
    samples = []
    for split in ("training", "validation", "evaluation"):
        for c in range(2):
            (tmp_path / split / f"class_{c:02d}").mkdir(parents=True)
    for i in range(BASE + PRODUCTION):
        name = f"prod_{i:04d}.png" if i >= BASE else f"{i:04d}.png"
        relative = f"training/class_{i % 2:02d}/{name}"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / relative)
        if i >= BASE:
            samples.append({"file": relative, "split": "training"})
    for c in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            tmp_path / "validation" / f"class_{c:02d}" / "v.png")
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            tmp_path / "evaluation" / f"class_{c:02d}" / "e.png")
    (tmp_path / MERGED_LINEAGE).write_text(json.dumps({"samples": samples}))
    (tmp_path / "classes.txt").write_text("pizza\nsoup\n")
    return tmp_path


def _files(root: Path) -> list[Path]:
    return [path for path, _ in ImageFolderDataset(root / "training", 24).items]


def test_weights_give_the_production_photos_their_share(merged):
    files = _files(merged)
    weights = production_weights(merged, files, 0.3)
    assert weights is not None and len(weights) == len(files)
    production = [w for f, w in zip(files, weights) if f.name.startswith("prod_")]
    assert len(production) == PRODUCTION
    assert sum(production) == pytest.approx(0.3) and sum(weights) == pytest.approx(1.0)
    base = [w for f, w in zip(files, weights) if not f.name.startswith("prod_")]
    assert base == pytest.approx([0.7 / BASE] * BASE)  # the rest, evenly


def test_nothing_to_raise_means_no_weights(merged, tmp_path_factory):
    files = _files(merged)
    assert production_weights(merged, files, 0.0) is None  # off
    assert production_weights(merged, files, PRODUCTION / len(files)) is None  # already that share
    plain = tmp_path_factory.mktemp("plain")  # no lineage: a dataset with no production data
    assert production_weights(plain, files, 0.3) is None


def test_a_broken_lineage_is_named(merged):
    (merged / MERGED_LINEAGE).write_text(json.dumps({"created_at": "x"}))
    with pytest.raises(BadInput, match=f"{MERGED_LINEAGE} is not an export lineage"):
        production_weights(merged, _files(merged), 0.3)


def test_the_loader_draws_by_weight_and_repeats_for_a_seed(merged):
    dataset = ImageFolderDataset(merged / "training", 24)
    weights = production_weights(merged, _files(merged), 0.5)

    def draws(seed: int) -> list[int]:
        loader = train_loader(dataset, batch_size=len(dataset), seed=seed, weights=weights)
        return [i for _ in range(100) for i in loader.sampler]  # an epoch is len(dataset) draws

    first = draws(3)
    assert len(first) == 100 * len(dataset)
    production = {i for i, (path, _) in enumerate(dataset.items) if path.name.startswith("prod_")}
    share = sum(i in production for i in first) / len(first)
    assert 0.45 < share < 0.55  # 2,000 draws at 0.5: the sd is 0.011
    assert draws(3) == first and draws(4) != first


def test_a_fine_tune_draws_by_the_configured_share(merged, tmp_path, monkeypatch, capsys):
    """train() hands the weights to its loader only when fine-tuning a parent."""
    from gourmetgram import training
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.model import ModelSpec, build_model, save_checkpoint

    seen: list[list[float] | None] = []

    class Stop(Exception):
        pass

    def loader(*args, weights=None, **kwargs):
        seen.append(weights)
        raise Stop

    monkeypatch.setattr(training, "train_loader", loader)
    cfg = load_config("demo")
    cfg = override(cfg, "train", fine_tune={"epochs": 1, "lr": 1e-4, "production_share": 0.4})
    cfg = override(cfg, "model", image_size=32)
    report = validate_dataset(merged, check_images=False, progress=False)
    mc = cfg.model
    spec = ModelSpec(tuple(report.class_names), mc.image_size, mc.arch, mc.width_mult, mc.dropout)
    parent = parent_from_checkpoint(save_checkpoint(build_model(spec), tmp_path / "parent.pt"))
    for p in (parent, None):
        with pytest.raises(Stop):
            training.train(merged, report, cfg, tmp_path / "child.pt", log_to_mlflow=False, progress=True, parent=p)
    with_parent, scratch = seen
    assert scratch is None
    assert with_parent is not None
    assert sum(w for f, w in zip(_files(merged), with_parent) if f.name.startswith("prod_")) == pytest.approx(0.4)
    assert "production photos are 40% of each epoch's draws" in capsys.readouterr().out
