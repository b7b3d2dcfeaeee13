"""The staging gate: load-test the staging endpoint, then start the canary or block it."""

from __future__ import annotations

import math
import re
import tempfile
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from components.steps.outcomes import CanaryOutcome
from components.steps.runtime import check_version, tag_version
from gourmetgram.errors import BadInput

if TYPE_CHECKING:
    from gourmetgram.loadtest import LoadTestSummary

TAG_STAGING_LOADTEST = "staging.loadtest"  # model-version tag: passed | failed
TAG_STAGING_LOADTEST_SUMMARY = "staging.loadtest.summary"
_RUN_TIME = re.compile(r"^\s*(\d+h)?\s*(\d+m)?\s*(\d+s?)?\s*$")


def check_run_time(run_time: str) -> str:
    """Locust's ``-t`` syntax (``30s``, ``5m``, ``1h30m``, ``90``), checked before a pod waits on it."""
    if not run_time or not run_time.strip() or not _RUN_TIME.match(run_time) or not any(c.isdigit() for c in run_time):
        raise BadInput(f"run_time {run_time!r}: use Locust's syntax, e.g. 30s, 5m, 1h30m")
    return run_time.strip().replace(" ", "")


def resolve_images(images: str | Path, work: str | Path) -> Path:
    """The folder of images to send: a local folder as it is, or an ``s3://`` URI downloaded
    into ``work``. An s3 dataset root in the Food-11 layout (the one the training pipeline
    ingested, e.g. ``s3://gourmetgram-datasets/food11``) gives its evaluation split; any other
    prefix gives every object under it."""
    from gourmetgram import objectstore
    from gourmetgram.constants import SPLITS

    source = str(images).strip()
    if not objectstore.is_s3(source):
        return Path(source)
    root = source.rstrip("/")
    split = f"{root}/{SPLITS[-1]}"  # evaluation: images the model was never trained on
    chosen = split if objectstore.exists(split) else root
    target = Path(work) / "images"
    objectstore.download_tree(chosen, target)
    print(f"load-test images: {chosen} -> {target}", flush=True)
    return target


def loadtest_step(staging_url: str, images: str | Path, out_dir: str | Path, slo: str = "slo", users: int = 4,
                  run_time: str = "60s", spawn_rate: float = 2.0, quiet: bool = False) -> LoadTestSummary:
    """Load-test the staging endpoint headless and judge it by the SLOs.

    ``out_dir`` gets Locust's CSVs, its HTML report (``report.html``), ``summary.json`` and
    ``summary.txt``. A missed SLO is a verdict (``passed=False`` with reasons), not an error;
    bad input (URL, images, SLO file, users, run time) raises :class:`BadInput`.
    """
    from gourmetgram.config import load_slo
    from gourmetgram.loadtest import run_loadtest

    parsed = urllib.parse.urlparse(staging_url or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BadInput(f"staging_url {staging_url!r} must be an http(s) URL of the staging endpoint")
    if not images or not str(images).strip():
        raise BadInput("images_uri is empty: pass the dataset's s3:// URI (its evaluation split is used), an "
                        "s3:// prefix of images, or a folder of images in the step's pod")
    if isinstance(users, bool) or int(users) < 1:
        raise BadInput(f"users must be >= 1, got {users}")
    run_time = check_run_time(run_time)
    cfg = load_slo(slo)
    with tempfile.TemporaryDirectory(prefix="gourmetgram-gate-images-") as work:
        folder = resolve_images(images, work)
        if not folder.is_dir() or not any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in folder.rglob("*")):
            raise BadInput(f"images_uri {images} is not a folder with .jpg/.jpeg/.png images")
        print(f"load test: {users} users for {run_time} against {staging_url}; SLO from {cfg.source}: "
              f"p95 <= {cfg.p95_ms:g} ms, error rate <= {cfg.max_error_rate:.2%}, >= {cfg.min_rps:g} req/s, "
              f">= {cfg.min_requests} requests", flush=True)
        summary = run_loadtest(staging_url.rstrip("/"), folder, Path(out_dir), cfg, shape="constant",
                               users=int(users), spawn_rate=spawn_rate, run_time=run_time, quiet=quiet)
    print(summary.format(), flush=True)
    return summary


def loadtest_metrics(summary: LoadTestSummary) -> dict[str, float]:
    """The figures the KFP UI shows (finite numbers only: metadata is a protobuf Struct)."""
    figures = {"p50_ms": summary.p50_ms, "p95_ms": summary.p95_ms, "p99_ms": summary.p99_ms,
               "error_rate": summary.error_rate, "rps": summary.rps, "requests": float(summary.requests),
               "bad_requests": float(summary.bad_requests),
               "bad_request_failures": float(summary.bad_request_failures)}
    return {k: float(v) for k, v in figures.items() if math.isfinite(float(v))}


def promote_step(version: int, registered_model_name: str, canary_percent: int, summary: str = "",
                 isvc_namespace: str = "", isvc_name: str = "", api_client=None) -> CanaryOutcome:
    """The load test passed: start the canary of ``version``.

    With ``isvc_namespace`` set, first patch the production InferenceService (one merge
    patch of predictor and transformer, :class:`gourmetgram.rollout.kube.KubeRollout`,
    in-cluster credentials) to serve the version's bundle at ``canary_percent``%; then
    point the registry's ``canary`` alias at it (so the alias never names a canary the
    cluster does not run) and tag the version ``staging.loadtest=passed``.
    """
    from gourmetgram import registry
    from gourmetgram.constants import CANARY, ISVC_NAMES, PRODUCTION

    if isinstance(canary_percent, bool) or not 1 <= int(canary_percent) <= 100:
        raise BadInput(f"canary_percent must be an integer in 1..100, got {canary_percent}")
    version = check_version(version, registered_model_name)
    patched = ""
    if isvc_namespace and isvc_namespace.strip():
        from gourmetgram.rollout.kube import KubeRollout

        name = (isvc_name or "").strip() or ISVC_NAMES[PRODUCTION]
        bundle = registry.bundle_for(version, registered_model_name)
        KubeRollout(name, isvc_namespace.strip(), api_client).canary(bundle, int(canary_percent), version)
        patched = f"{isvc_namespace.strip()}/{name}"
        print(f"InferenceService {patched}: canary of version {version} ({bundle}) at {canary_percent}%",
              flush=True)
    registry.set_stage(CANARY, version, registered_model_name)
    tag_version(version, registered_model_name, {TAG_STAGING_LOADTEST: "passed",
                                                 TAG_STAGING_LOADTEST_SUMMARY: summary})
    print(f"registry: canary -> {registered_model_name} version {version}"
          + ("" if patched else " (no isvc_namespace: the cluster was not patched; "
                                "start it with `gourmetgram rollout canary`)"), flush=True)
    return CanaryOutcome(verdict="canary", version=version, registered_model=registered_model_name,
                         alias=CANARY, canary_percent=int(canary_percent), inferenceservice=patched)


def block_step(version: int, registered_model_name: str, reasons: Sequence[str], summary: str = ""
               ) -> CanaryOutcome:
    """The load test failed: say why, tag the version ``staging.loadtest=failed``; no canary."""
    items = [r for r in reasons if r.strip()] or ["the staging load test failed its SLOs"]
    print(f"CANARY BLOCKED: version {version} missed the staging SLOs; the canary alias and the "
          "cluster are left as they are. Reasons:", flush=True)
    for reason in items:
        print(f"  - {reason}", flush=True)
    version = check_version(version, registered_model_name)
    tag_version(version, registered_model_name, {TAG_STAGING_LOADTEST: "failed",
                                                 f"{TAG_STAGING_LOADTEST}.reasons": "; ".join(items),
                                                 TAG_STAGING_LOADTEST_SUMMARY: summary})
    return CanaryOutcome(verdict="blocked", version=version, registered_model=registered_model_name, reasons=items)
