"""Train the classifier: seeded, CPU or CUDA, early stopping, progress bar, MLflow logging."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from gourmetgram.bundle import MODEL_SPEC_FILENAME
from gourmetgram.config import RunConfig
from gourmetgram.continual import SCRATCH_INIT, TAG_INIT_FROM, Parent, check_compatible, fine_tune_config, production_weights
from gourmetgram.data.dataset import ImageFolderDataset, train_loader
from gourmetgram.data.layout import DatasetReport
from gourmetgram.model import Classifier, ModelSpec, build_model, pick_device, save_checkpoint
from gourmetgram.tracking import configure_mlflow


@dataclasses.dataclass
class TrainResult:
    checkpoint: str
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    seconds: float
    mlflow_run_id: str | None
    history: list[dict]
    lineage: dict[str, str] = dataclasses.field(default_factory=dict)  # the parent (continual training)


def seed_everything(seed: int) -> None:
    """Seed every generator and ask torch for deterministic kernels (cuDNN/cuBLAS included).

    That makes a run repeatable on one machine; another CPU or GPU type still computes
    slightly different sums, and training amplifies them, so figures differ between machines.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def evaluate_accuracy(model: Classifier, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over a loader."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    return correct / max(total, 1), loss_sum / max(total, 1)


def threads_for(cores: int, idle_share: float) -> int:
    """Training threads for ``cores`` of which ``idle_share`` (0..1) is idle: the idle cores,
    rounded, at least one. Pure."""
    return max(1, min(cores, round(cores * idle_share)))


def idle_share(seconds: float = 0.5) -> float | None:
    """The share of CPU time idle over ``seconds`` (Linux ``/proc/stat``); None elsewhere."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / (total1 - total0) if total1 > total0 else None


def cpu_threads(requested: int) -> tuple[int, str]:
    """How many threads PyTorch trains with on the CPU, and why. ``requested`` > 0 is taken as
    is; 0 takes the cores idle now. Why: PyTorch's thread pool waits at every operator for all
    its threads; on 2 cores also serving a stack (the local loop's retrain), 2 threads took 530
    ms a step where 1 took 319 (idle: 219 vs 314), and a demo retrain ran 20x slower than idle."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > 0:
        return requested, f"train.threads {requested}"
    idle = idle_share()
    if idle is None:
        return cores, f"all {cores} cores (idle share unknown)"
    n = threads_for(cores, idle)
    return n, f"{cores} cores, {idle:.0%} idle at the start (train.threads 0: the idle cores)"


def train(dataset_root: str | Path, report: DatasetReport, cfg: RunConfig, checkpoint_path: str | Path,
          log_to_mlflow: bool = True, progress: bool = True, run_name: str | None = None,
          parent: Parent | None = None) -> TrainResult:
    """Train on ``training``, early-stop on ``validation``, keep the best checkpoint.

    ``epochs: 0`` yields the untrained network (used to prove the evaluation gate). With a
    ``parent`` (continual training, :mod:`gourmetgram.continual`) the network starts from its
    weights, class head included, for ``train.fine_tune``'s epochs at its learning rate.
    """
    root = Path(dataset_root)
    if parent is not None:
        cfg = fine_tune_config(cfg)
    tc, mc = cfg.train, cfg.model
    seed_everything(tc.seed)
    device = pick_device(tc.device)
    spec = ModelSpec(tuple(report.class_names), mc.image_size, mc.arch, mc.width_mult, mc.dropout)
    if parent is None:
        model = build_model(spec, mc.pretrained_weights)
        lineage = {TAG_INIT_FROM: SCRATCH_INIT}
    else:
        check_compatible(parent.model, spec)
        model = build_model(spec)
        model.load_state_dict(parent.model.state_dict())
        lineage = dict(parent.lineage)
        if progress:
            print(f"fine-tuning {parent.describe()}: {tc.epochs} epochs at lr {tc.lr:g}", flush=True)
    model = model.to(device)
    if device.type == "cpu":
        threads, why = cpu_threads(tc.threads)
        torch.set_num_threads(threads)
        if progress:
            print(f"training on the CPU with {threads} thread(s): {why}", flush=True)

    train_ds = ImageFolderDataset(root / "training", mc.image_size, tc.hflip, tc.crop_scale, tc.seed)
    val_ds = ImageFolderDataset(root / "validation", mc.image_size)
    weights = None
    if parent is not None:
        weights = production_weights(root, [path for path, _ in train_ds.items], tc.fine_tune.production_share)
        if weights is not None and progress:
            print(f"production photos are {tc.fine_tune.production_share:.0%} of each epoch's draws "
                  "(train.fine_tune.production_share)", flush=True)
    train_dl = train_loader(train_ds, tc.batch_size, tc.seed, tc.num_workers,
                            drop_last=len(train_ds) > tc.batch_size, weights=weights)
    val_dl = DataLoader(val_ds, tc.batch_size * 2, num_workers=tc.num_workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(tc.epochs, 1))

    mlflow = configure_mlflow() if log_to_mlflow else None
    run = mlflow.start_run(run_name=run_name) if mlflow else None
    if mlflow:
        mlflow.log_params({**{f"model.{k}": v for k, v in dataclasses.asdict(mc).items()},
                           **{f"train.{k}": v for k, v in dataclasses.asdict(tc).items()},
                           "data.root": str(root), "data.fingerprint": report.fingerprint,
                           "data.num_classes": report.num_classes, "device": str(device)})
        mlflow.set_tags(lineage)

    history: list[dict] = []
    best_acc, best_epoch, stale = -1.0, 0, 0
    started = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        model.train()
        loss_sum, seen, correct = 0.0, 0, 0
        bar = tqdm(train_dl, desc=f"epoch {epoch}/{tc.epochs}", unit="batch", disable=None if progress else True, leave=False)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        scheduler.step()
        val_acc, val_loss = evaluate_accuracy(model, val_dl, device)
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               "val_loss": val_loss, "val_accuracy": val_acc}
        history.append(row)
        if progress:
            print(f"epoch {epoch:>2}: train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} | "
                  f"val loss {val_loss:.3f} acc {val_acc:.3f}", flush=True)
        if mlflow:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if val_acc > best_acc:
            best_acc, best_epoch, stale = val_acc, epoch, 0
            save_checkpoint(model, checkpoint_path, {"epoch": epoch, "val_accuracy": val_acc})
        else:
            stale += 1
            if stale >= tc.patience:
                if progress:
                    print(f"early stopping: no validation improvement for {tc.patience} epochs", flush=True)
                break
    if best_acc < 0:  # epochs == 0: keep the untrained network
        best_acc, _ = evaluate_accuracy(model, val_dl, device)
        save_checkpoint(model, checkpoint_path, {"epoch": 0, "val_accuracy": best_acc})
    seconds = time.perf_counter() - started

    run_id = None
    if mlflow:
        from gourmetgram.model import load_checkpoint

        best = load_checkpoint(checkpoint_path)
        mlflow.log_metrics({"best_val_accuracy": best_acc, "train_seconds": seconds})
        mlflow.log_dict(spec.to_dict(), MODEL_SPEC_FILENAME)
        example = np.zeros((2, 3, mc.image_size, mc.image_size), np.float32)
        mlflow.pytorch.log_model(best, name="model", input_example=example, serialization_format="pickle",
                                 pip_requirements=["torch", "torchvision"])  # skips slow inference
        assert run is not None
        run_id = run.info.run_id
        mlflow.end_run()
    return TrainResult(str(checkpoint_path), best_acc, best_epoch, len(history), seconds, run_id, history,
                       lineage)
