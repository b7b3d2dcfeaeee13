"""Build the drift detector for an exported model bundle (a pipeline step after export).

Writes ``<bundle>/detector/``:
  ``mmd/``              alibi-detect ``save_detector`` output (online MMD, config + x_ref)
  ``label_prior.json``  training class distribution (label drift baseline)
  ``profile.json``      image properties of the reference photos, overall and per class
                        (drift that says what changed: drift_detector.profile)
  ``detector.json``     the settings, thresholds and timings, for people and the server
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from drift_detector.detector import (
    LABEL_PRIOR_FILE,
    MMD_DIR,
    SETTINGS_FILE,
    detector_dir,
    fast_thresholds,
    thresholds_of,
    torch_threads,
)
from drift_detector.embedding import Embedder
from drift_detector.profile import build_profile, write_profile
from gourmetgram.bundle import Bundle
from gourmetgram.constants import SPLITS
from gourmetgram.data.layout import list_images
from gourmetgram.errors import BadInput

# Defaults, measured on the demo set (untrained demo-spec features, 368 shuffled evaluation
# images, 10 orderings): ERT 10,000 with window 30 raised no false alarm in any ordering
# (ERT 5,000 / window 20: 1 in 10) and flagged darkened photos 10-22 samples after the
# shift. 40,000 bootstraps (4x the ERT; every threshold step keeps > ERT survivors) and
# 1,000 reference embeddings build in about 10 s on 2 busy cores with the vectorised
# bootstrap; the reference kernel matrix is N^2 floats (4 MB at N=1000).
N_REFERENCE = 1000
WINDOW_SIZE = 30
ERT = 10000
N_BOOTSTRAPS = 40000


def _check_settings(n_reference: int, window_size: int, ert: float, n_bootstraps: int) -> None:
    if window_size < 2:
        raise BadInput(f"window_size must be at least 2, got {window_size}")
    if n_reference <= 2 * window_size:
        raise BadInput(f"n_reference ({n_reference}) must exceed 2 * window_size ({2 * window_size})")
    if ert <= 1:
        raise BadInput(f"ert must be greater than 1, got {ert}")
    # Each of the W threshold steps drops the top 1/ERT of the surviving bootstraps; the
    # last quantile still needs at least ERT samples.
    if n_bootstraps * (1 - 1 / ert) ** window_size < ert + 1:
        raise BadInput(
            f"n_bootstraps ({n_bootstraps}) is too small for ert={ert}, window_size={window_size}; "
            f"use at least {int(2 * ert)}"
        )


def build_detector(
    bundle_dir: str | Path,
    dataset_root: str | Path,
    n_reference: int = N_REFERENCE,
    window_size: int = WINDOW_SIZE,
    ert: float = ERT,
    n_bootstraps: int = N_BOOTSTRAPS,
    seed: int = 0,
    split: str = SPLITS[0],
) -> Path:
    """Embed sampled reference images, configure online MMD, save it; returns the folder."""
    import torch
    from alibi_detect.cd import MMDDriftOnline
    from alibi_detect.saving import save_detector

    _check_settings(n_reference, window_size, ert, n_bootstraps)
    bundle_dir, dataset_root = Path(bundle_dir), Path(dataset_root)
    embedder = Embedder(bundle_dir)  # checks the bundle before any work
    split_dir = dataset_root / split
    if not split_dir.is_dir():
        raise BadInput(f"{split_dir} does not exist; pass a dataset root in the Food-11 layout")
    items = list_images(split_dir)
    if len(items) <= 2 * window_size:
        raise BadInput(f"{split_dir} holds {len(items)} images; need more than {2 * window_size}")
    class_names = Bundle(Path(bundle_dir)).class_names()
    timings: dict[str, float] = {}

    start = time.perf_counter()
    sample = random.Random(seed).sample(items, min(n_reference, len(items)))
    blobs = [path.read_bytes() for path, _ in sample]
    x_ref = embedder.embed_images(blobs)
    timings["embed_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    profile = build_profile(blobs, [label for _, label in sample], class_names)
    timings["profile_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    torch.manual_seed(seed)
    with fast_thresholds(), torch_threads(1):
        cd = MMDDriftOnline(
            x_ref, ert=ert, window_size=window_size, backend="pytorch", x_ref_preprocessed=True,
            n_bootstraps=n_bootstraps, device="cpu", verbose=False, data_type="image-embedding",
        )
    timings["configure_seconds"] = time.perf_counter() - start
    cd.reset_state()

    out = detector_dir(bundle_dir)
    if (out / MMD_DIR).exists():
        shutil.rmtree(out / MMD_DIR)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    save_detector(cd, str(out / MMD_DIR))
    timings["save_seconds"] = time.perf_counter() - start

    write_profile(out, profile)
    counts = np.bincount([c for _, c in items], minlength=len(class_names))[:len(class_names)]
    (out / LABEL_PRIOR_FILE).write_text(json.dumps({
        "class_names": list(class_names), "counts": counts.tolist(),
        "prior": (counts / counts.sum()).tolist(), "split": split,
    }, indent=2))
    settings = {
        "method": "MMDDriftOnline", "backend": "pytorch", "n_reference": len(sample),
        "window_size": window_size, "ert": ert, "n_bootstraps": n_bootstraps, "seed": seed,
        "embedding_dim": int(x_ref.shape[1]), "image_size": embedder.image_size,
        "reference_split": split, "dataset": str(dataset_root),
        "thresholds": thresholds_of(cd), "timings": timings,
    }
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    return out
