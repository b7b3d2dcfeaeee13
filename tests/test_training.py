"""Training is reproducible for a seed on one machine (its figures differ between CPU types)."""

from __future__ import annotations

import pytest
import torch

from gourmetgram.config import load_config, override
from gourmetgram.data.layout import validate_dataset
from gourmetgram.training import cpu_threads, idle_share, threads_for, train


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_the_same_seed_trains_the_same_weights(demo_dataset, tmp_path, one_thread):
    report = validate_dataset(demo_dataset, progress=False)
    cfg = override(load_config("demo"), "train", epochs=1, patience=1)

    def run(name: str, seed: int):
        result = train(demo_dataset, report, override(cfg, "train", seed=seed), tmp_path / f"{name}.pt",
                       log_to_mlflow=False, progress=False)
        return result, _weights(result.checkpoint)

    first, a = run("a", 0)
    again, b = run("b", 0)
    _, c = run("c", 1)
    assert first.history == again.history
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_training_threads_are_the_idle_cores():
    """On cores busy serving, a second PyTorch thread stalls every step: training takes the idle
    cores, at least one; a configured count is taken as is."""
    assert threads_for(2, 1.0) == 2
    assert threads_for(2, 0.3) == 1  # 1.4 cores busy serving: one thread
    assert threads_for(2, 0.0) == 1  # never none
    assert threads_for(16, 0.5) == 8
    assert threads_for(4, 1.7) == 4  # never more than the cores
    assert cpu_threads(3)[0] == 3
    share = idle_share(0.05)
    assert share is None or 0.0 <= share <= 1.0
