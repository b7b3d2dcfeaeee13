"""The logger sink: an ASGI app that answers at once and detects drift off the request path.

``POST /`` decodes the CloudEvent (400 if malformed), puts it on a bounded queue and
answers 202; when the queue is full the event is dropped and counted (503), so the
logger never waits on the detector. Delivery to it is at least once (the logger and the
broker retry), so an event it accepted recently (same ``ce-id``, type and endpoint) is
answered 202 again and counted as a duplicate, not fed to the detector twice. With an ingest token (``--token-file`` or
``$GOURMETGRAM_DETECTOR_TOKEN``) ``POST /`` takes events only with ``Authorization: Bearer
<token>`` (401 otherwise); on the cluster a NetworkPolicy restricts it instead (the chart's
``detector.networkPolicy``). Bodies over the limit are refused while they stream (413).
ONE worker thread owns the stateful detector: it
drains the queue, embeds every queued image in one ONNX Runtime call, then feeds the
embeddings to ``MMDDriftOnline.predict`` one at a time, in arrival order.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import threading
import time
from pathlib import Path

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drift_detector.detector import (
    LABEL_PRIOR_FILE,
    DriftState,
    LabelDrift,
    detector_dir,
    load_mmd,
    trim_history,
)
from drift_detector.embedding import Embedder
from drift_detector.events import BadEvent, InferenceEvent, decode_event
from drift_detector.metrics import DetectorMetrics
from drift_detector.profile import ProfileDrift, image_properties
from gourmetgram import bodylimit, control
from gourmetgram.errors import BadInput
from gourmetgram.inference_events import sample_id
from gourmetgram.jsonlog import log_json

log = logging.getLogger("drift_detector")
MAX_BODY_BYTES = 64 * 1024 * 1024
RECENT_IDS = 20000  # events remembered for the duplicate check (minutes of a busy stack)
# The image-property report (KS tests over the window) costs ~20 ms; recomputed per event it was
# three quarters of the worker's CPU (45 of 60 ms a photo). It is refreshed at most this often
# while events arrive, and as soon as the queue runs dry; Prometheus scrapes every few seconds.
PROFILE_INTERVAL_S = 1.0


class DriftService:
    """Queue + single worker around one stateful detector."""

    def __init__(self, bundle_dir: str | Path, max_queue: int = 1000, max_batch: int = 64,
                 label_window: int = 500, onnx_threads: int = 0, start: bool = True,
                 loaded: tuple | None = None):
        """``loaded`` is a :func:`load_mmd` result to reuse (tests); the service then owns it."""
        import torch

        torch.set_num_threads(1)  # per-sample MMD updates: one thread is 20x faster on busy cores
        self.bundle_dir = Path(bundle_dir)
        self.metrics = DetectorMetrics()
        self.embedder = Embedder(self.bundle_dir, threads=onnx_threads, max_batch=max_batch)
        self.detector, self.settings, self.load_seconds = loaded or load_mmd(self.bundle_dir)
        prior_path = detector_dir(self.bundle_dir) / LABEL_PRIOR_FILE
        prior = json.loads(prior_path.read_text())
        self.class_names: list[str] = prior["class_names"]
        self.labels = LabelDrift(prior["prior"], window=label_window)
        # None for a detector built before image-property profiles existed
        self.profile = ProfileDrift.load(detector_dir(self.bundle_dir), self.class_names, prior["prior"])
        self.profile_report: dict = {}
        self.state = DriftState()
        self.max_batch = max_batch
        self.queue: queue.Queue[InferenceEvent] = queue.Queue(maxsize=max_queue)
        self.received = self.processed = self.dropped = self.invalid = self.duplicates = 0
        self._recent: collections.OrderedDict[tuple[str, str, str], None] = collections.OrderedDict()
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._profile_dirty = False  # photos or answers not yet in profile_report
        self._profile_at = float("-inf")
        self.metrics.threshold.set(float(self.detector._detector.get_threshold(0)))
        self.metrics.state.set(0)
        self._worker = threading.Thread(target=self._run, name="drift-worker", daemon=True)
        if start:
            self._worker.start()

    # ---- the HTTP side (event loop): never blocks -----------------------------------
    def submit(self, event: InferenceEvent) -> bool:
        """Queue an event (True), or count it dropped when the queue is full (False). A repeat
        of a recent one is True without queueing it (the sender did deliver it)."""
        kind = "request" if event.is_request else "response"
        key = (event.id, kind, event.extensions.get("endpoint", ""))
        if key in self._recent:
            with self._count_lock:
                self.duplicates += 1
            self.metrics.duplicates.inc()
            return True
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            with self._count_lock:
                self.dropped += 1
            self.metrics.dropped.inc()
            return False
        self._recent[key] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        with self._count_lock:
            self.received += 1
        self.metrics.received.labels(kind).inc()
        self.metrics.backlog.set(self.queue.qsize())
        return True

    def reject(self) -> None:
        with self._count_lock:
            self.invalid += 1
        self.metrics.invalid.inc()

    # ---- the worker thread: the only user of the detector ---------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self._profile_dirty:  # quiet: bring the report up to date
                    self._refresh_profile()
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._process(batch)
            except Exception:  # a bug must not kill the only worker
                log.exception("drift worker failed on a batch of %d events", len(batch))
            finally:
                if self._profile_dirty and time.monotonic() - self._profile_at >= PROFILE_INTERVAL_S:
                    self._refresh_profile()
                with self._count_lock:
                    self.processed += len(batch)
                for event in batch:
                    self.metrics.processed.labels("request" if event.is_request else "response").inc()
                self.metrics.backlog.set(self.queue.qsize())
                with self._idle:
                    self._idle.notify_all()

    def _process(self, batch: list[InferenceEvent]) -> None:
        images: list[bytes] = []
        tensors: list[np.ndarray] = []
        for event in batch:
            if event.is_request:
                images.extend(event.images)
                if event.tensors is not None:
                    tensors.append(event.tensors)
                self._profile_photos(event)
            elif not (event.extensions.get("endpoint") == "shadow"  # a shadow's answers reached no user
                      or event.extensions.get("shadow") == "true"):
                self.labels.update(event.classes)
                if self.profile is not None:
                    self.profile.add_predictions((sample_id(event.id, k), c) for k, c in enumerate(event.classes))
        if images or tensors:
            arrays, kept = self.embedder.preprocess(images)
            if len(kept) < len(images):
                self.metrics.bad_images.inc(len(images) - len(kept))
            parts = [arrays] + [t for t in tensors if t.shape[2:] == arrays.shape[2:]]
            embeddings = self.embedder.embed_arrays(np.concatenate(parts))
            for x in embeddings:
                self._predict(x)
        stat = self.labels.statistic()
        self.metrics.label_stat.set(float("nan") if stat is None else stat)
        self._profile_dirty = self.profile is not None

    def _profile_photos(self, event: InferenceEvent) -> None:
        """Each image's properties into the profile window; a photo that does not decode is
        skipped (the embedder counts it)."""
        if self.profile is None:
            return
        for k, blob in enumerate(event.images):
            try:
                self.profile.add_photo(sample_id(event.id, k), image_properties(blob))
            except BadInput:
                continue

    def _refresh_profile(self) -> None:
        """The profile report and its gauges from the window as it is now (worker thread)."""
        self._profile_at = time.monotonic()
        try:
            self._update_profile_metrics()
        except Exception:  # a side figure: never stop the worker
            log.exception("image-property report failed")
        self._profile_dirty = False  # after the report: wait_idle then reads the current one
        with self._idle:
            self._idle.notify_all()

    def _update_profile_metrics(self) -> None:
        if self.profile is None:
            return
        report = self.profile.report()
        self.profile_report = report
        for name, p in report["properties"].items():
            self.metrics.property_shift.labels(name).set(p["ks"])
            self.metrics.property_shift_sd.labels(name).set(p["shift_sd"])
        for name, c in report["classes"].items():
            self.metrics.class_shift_sd.labels(name).set(float("nan") if c["shift_sd"] is None else c["shift_sd"])

    def _predict(self, x: np.ndarray) -> None:
        data = self.detector.predict(x, return_test_stat=True)["data"]
        trim_history(self.detector)
        self.state.record(data)
        m = self.metrics
        m.test_stat.set(self.state.test_stat if self.state.test_stat is not None else float("nan"))
        m.threshold.set(self.state.threshold if self.state.threshold is not None else float("nan"))
        m.state.set(int(self.state.is_drift))
        if self.state.is_drift:
            m.drift_events.inc()

    # ---- control --------------------------------------------------------------------
    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until every accepted event is processed and in the profile report (tests,
        benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.processed < self.received or self._profile_dirty:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.2))
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout=5)

    def status(self) -> dict:
        s = self.state
        stat = self.labels.statistic()
        return {
            "t": s.t, "test_stat": s.test_stat, "threshold": s.threshold, "is_drift": s.is_drift,
            "drift_flags": s.drift_flags, "first_drift_t": s.first_drift_t,
            "recent_drift_t": list(s.recent_drift_t),
            "received": self.received, "processed": self.processed, "dropped": self.dropped,
            "invalid": self.invalid, "duplicates": self.duplicates, "backlog": self.queue.qsize(),
            "label_drift": {"statistic": stat, "window": len(self.labels.window),
                            "distribution": self.labels.distribution().round(4).tolist(),
                            "prior": self.labels.prior.round(4).tolist(),
                            "class_names": self.class_names},
            "detector": {k: self.settings.get(k) for k in
                         ("window_size", "ert", "n_bootstraps", "n_reference", "seed")},
            # what changed: image properties and predicted classes vs the training photos
            "profile": self.profile_report or None,
            "load_seconds": round(self.load_seconds, 3),
        }


def _lifespan(service: DriftService):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.stop()

    return lifespan


def create_app(service: DriftService, token: str | None = None) -> Starlette:
    """The HTTP contract is KServe's logger sink: POST / with binary-mode CloudEvent headers.

    ``token``: when set, events must carry it (``Authorization: Bearer``), else 401."""

    async def receive(request: Request) -> Response:
        if token is not None and not control.authorized(request.headers, token):
            service.reject()
            return JSONResponse({"error": "the detector takes events only with its ingest token "
                                          "('Authorization: Bearer <token>')"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            body = await bodylimit.read_body(request, MAX_BODY_BYTES)
        except bodylimit.BodyTooLarge as exc:
            service.reject()
            return JSONResponse({"error": f"event {exc}"}, status_code=413)
        try:
            event = decode_event(request.headers, body, service.class_names)
        except BadEvent as exc:
            service.reject()
            return JSONResponse({"error": str(exc)}, status_code=400)
        accepted = service.submit(event)
        log_json("detector", "received" if accepted else "dropped", event.id,
                 type="request" if event.is_request else "response", size=event.size)
        if not accepted:
            return JSONResponse({"error": "drift detector queue is full; event dropped"},
                                status_code=503)
        return JSONResponse({"accepted": True, "id": event.id}, status_code=202)

    async def metrics(request: Request) -> Response:
        service.metrics.backlog.set(service.queue.qsize())
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        return JSONResponse(service.status())

    async def health(request: Request) -> Response:
        alive = service._worker.is_alive()
        return JSONResponse({"status": "ok" if alive else "worker stopped"},
                            status_code=200 if alive else 503)

    return Starlette(routes=[
        Route("/", receive, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ], lifespan=_lifespan(service))


def serve(bundle_dir: str | Path, host: str = "127.0.0.1", port: int = 8070, max_queue: int = 1000,
          log_level: str = "info", token: str | None = None) -> None:
    import uvicorn

    if not Path(bundle_dir).is_dir():
        raise BadInput(f"bundle folder {bundle_dir} does not exist")
    service = DriftService(bundle_dir, max_queue=max_queue)
    log.warning("drift detector loaded in %.2fs; listening on http://%s:%d/ (ingest %s)",
                service.load_seconds, host, port, "needs the token" if token else "open")
    uvicorn.run(create_app(service, token), host=host, port=port, log_level=log_level, access_log=False)
