"""The stateful drift detectors: alibi-detect online MMD on embeddings, and label drift.

``MMDDriftOnline`` is stateful (a sliding test window and a time step), so exactly one
thread may call ``predict`` (the course's detector was shared by two threads without a
lock). :class:`DriftState` is owned by the server's single worker thread.

Threshold configuration (the bootstrap in ``_configure_thresholds``) is a Python loop of
``n_bootstraps * window_size`` small tensor operations: about a minute for 3,000
bootstraps on 2 busy cores, and ``load_detector`` re-runs it because online MMD only
saves its config. :func:`fast_thresholds` swaps in a vectorised version of the same
computation (same permutations drawn from the same torch RNG, same quantiles, checked
against the original in the tests), so build and load take seconds.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from gourmetgram.bundle import DETECTOR_SETTINGS_FILENAME, Bundle
from gourmetgram.errors import BadInput

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")  # alibi-detect imports numba

MMD_DIR = "mmd"
SETTINGS_FILE = DETECTOR_SETTINGS_FILENAME  # inside the bundle's detector/ (gourmetgram.bundle)
LABEL_PRIOR_FILE = "label_prior.json"
TRIM_HISTORY = 1000  # alibi keeps every test stat in a growing array; keep the tail only
BOOTSTRAP_CHUNK = 2048  # bootstraps per gathered kernel block (2048 x 59 x 59 floats = 28 MB)


def _vectorised_configure_thresholds(self) -> None:
    """Drop-in for ``MMDDriftOnlineTorch._configure_thresholds``, batched over bootstraps."""
    import torch
    from alibi_detect.utils.pytorch import quantile, zero_diag

    w_size = self.window_size
    etw_size = 2 * w_size - 1
    rw_size = self.n - etw_size
    # Draw the permutations exactly as the original does, so the RNG stream matches.
    perms = [torch.randperm(self.n) for _ in range(self.n_bootstraps)]
    y_all = torch.stack([perm[-etw_size:] for perm in perms]).to(self.k_xx.device)  # (B, 2W-1)
    k = self.k_xx
    k_full_sum = zero_diag(k).sum()
    k_col_sums = k.sum(0)
    # MMD of every bootstrap at every window offset, (B, W), in chunks: the gathered
    # (chunk, 2W-1, 2W-1) kernel blocks would take gigabytes for all bootstraps at once.
    chunks: list[torch.Tensor] = []
    for lo in range(0, len(y_all), BOOTSTRAP_CHUNK):
        y_inds = y_all[lo:lo + BOOTSTRAP_CHUNK]
        k_yy = k[y_inds[:, :, None], y_inds[:, None, :]]
        # Column sums over the sub-reference rows = all rows minus the test-window rows.
        k_xy_col_sums = k_col_sums[y_inds] - k_yy.sum(1)
        k_yy_offdiag = k_yy.sum((1, 2)) - k_yy.diagonal(dim1=1, dim2=2).sum(1)
        k_xx_sums = (k_full_sum - k_yy_offdiag - 2 * k_xy_col_sums.sum(1)) / (rw_size * (rw_size - 1))
        k_xy_col_sums = k_xy_col_sums / (rw_size * w_size)
        columns = []
        for w in range(w_size):
            sub = k_yy[:, w:w + w_size, w:w + w_size]
            sub_offdiag = sub.sum((1, 2)) - sub.diagonal(dim1=1, dim2=2).sum(1)
            columns.append(k_xx_sums + sub_offdiag / (w_size * (w_size - 1))
                           - 2 * k_xy_col_sums[:, w:w + w_size].sum(1))
        chunks.append(torch.stack(columns, 1).cpu())
    mmds_all = torch.cat(chunks)
    # Sequential filtering as in alibi: a bootstrap whose MMD crossed the threshold at
    # step w takes no part in the later steps.
    thresholds = []
    alive = torch.ones(len(mmds_all), dtype=torch.bool)
    for w in range(w_size):
        mmds = mmds_all[:, w]
        thresholds.append(quantile(mmds[alive], 1 - self.fpr))
        alive &= mmds < thresholds[-1]
    self.thresholds = thresholds


@contextlib.contextmanager
def fast_thresholds(enabled: bool = True) -> Iterator[None]:
    """Use the vectorised threshold bootstrap while constructing or loading a detector."""
    from alibi_detect.cd.pytorch.mmd_online import MMDDriftOnlineTorch

    original = MMDDriftOnlineTorch._configure_thresholds
    if enabled:
        MMDDriftOnlineTorch._configure_thresholds = _vectorised_configure_thresholds
    try:
        yield
    finally:
        MMDDriftOnlineTorch._configure_thresholds = original


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Small tensor ops run faster on one thread than fighting for 2 shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thresholds_of(cd) -> list[float]:
    return [float(t) for t in cd._detector.thresholds]


def detector_dir(bundle_dir: str | Path) -> Path:
    return Bundle(Path(bundle_dir)).detector_dir


def load_mmd(bundle_dir: str | Path, fast: bool = True):
    """Load ``<bundle>/detector/mmd`` with ``load_detector``; returns (detector, settings, seconds).

    Loading rebuilds the detector from its config and re-runs the threshold bootstrap,
    so the torch RNG is seeded with the build seed first: the thresholds then equal the
    ones recorded at build time (checked here).
    """
    import torch

    folder = detector_dir(bundle_dir)
    settings_path = folder / SETTINGS_FILE
    if not settings_path.is_file():
        raise BadInput(f"{settings_path} does not exist; run `gourmetgram detector build` first")
    settings = json.loads(settings_path.read_text())
    start = time.perf_counter()
    from alibi_detect.saving import load_detector

    torch.manual_seed(int(settings.get("seed", 0)))
    with fast_thresholds(fast), torch_threads(1):
        cd = load_detector(str(folder / MMD_DIR))
    seconds = time.perf_counter() - start
    built = settings.get("thresholds")
    loaded = thresholds_of(cd)
    if built and not np.allclose(built, loaded, rtol=1e-4, atol=1e-7):
        settings["threshold_mismatch"] = True
    cd.reset_state()
    return cd, settings, seconds


def trim_history(cd) -> None:
    """Bound alibi's per-step history arrays (they grow by one element per predict)."""
    d = cd._detector
    if len(d.test_stats) > 2 * TRIM_HISTORY:
        d.test_stats = d.test_stats[-TRIM_HISTORY:]
        d.drift_preds = d.drift_preds[-TRIM_HISTORY:]


class LabelDrift:
    """Predicted-class distribution over a sliding window vs the training prior.

    The statistic is the total-variation distance (0 = identical, 1 = disjoint); it is
    reported once ``min_count`` predictions are in the window.
    """

    def __init__(self, prior: Sequence[float], window: int = 500, min_count: int = 50):
        frequencies = np.asarray(prior, dtype=np.float64)
        if frequencies.ndim != 1 or frequencies.sum() <= 0:
            raise BadInput("label prior must be a non-empty list of class frequencies")
        self.prior = frequencies / frequencies.sum()
        self.window: collections.deque[int] = collections.deque(maxlen=window)
        self.min_count = min_count
        self._lock = threading.Lock()  # the worker writes, /status and /metrics read

    def update(self, classes: Sequence[int]) -> None:
        n = len(self.prior)
        with self._lock:
            self.window.extend(c for c in classes if 0 <= c < n)

    def distribution(self) -> np.ndarray:
        with self._lock:
            window = list(self.window)
        counts = np.bincount(np.asarray(window, dtype=int), minlength=len(self.prior))
        return counts / max(1, counts.sum())

    def statistic(self) -> float | None:
        if len(self.window) < self.min_count:
            return None
        return float(0.5 * np.abs(self.distribution() - self.prior).sum())


@dataclass
class DriftState:
    """The latest online-MMD reading, as /status and /metrics report it."""

    t: int = 0
    test_stat: float | None = None
    threshold: float | None = None
    is_drift: bool = False
    drift_flags: int = 0
    first_drift_t: int | None = None
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50))
    recent_drift_t: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100))

    def record(self, data: dict) -> None:
        self.t = int(data["time"])
        self.test_stat = float(data["test_stat"])
        self.threshold = float(data["threshold"])
        self.is_drift = bool(data["is_drift"])
        if self.is_drift:
            self.drift_flags += 1
            if self.first_drift_t is None:
                self.first_drift_t = self.t
            self.recent_drift_t.append(self.t)
        self.history.append(self.test_stat)
