"""The capture sink's HTTP side: ``POST /`` (logger CloudEvents), ``POST /v1/feedback``,
``/metrics``, ``/status``, ``/summary`` (read-only counts for the web app's operator page),
``/thumbnails/<sample id>`` (a small JPEG of a captured photo from the object store, for
the operator page's "most atypical recent photos"; never routed to the public API), ``/health``.

Events are bounded: at most ``capture.max_in_flight`` are worked on at once; beyond that
the sink answers 503 at once and the broker retries later (counted in
``capture_events_rejected_total``). An event is answered 200 only after its samples are
committed. Nothing here can reach a prediction: the gateway's logger and the broker sit
between, both asynchronous.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capture_sink.capture import Capture
from gourmetgram.constants import FEEDBACK_PATH, LOOP_SUMMARY_PATH, SAMPLE_THUMBNAIL_PATH
from gourmetgram.inference_events import BadEvent, decode_event
from gourmetgram.jsonlog import log_json
from gourmetgram.loop import quality
from gourmetgram.loop.feedback import (
    CLIENT_ID_HEADER,
    FeedbackError,
    check_content_type,
    client_key,
    parse_feedback,
    record_feedback,
)
from gourmetgram.loop.settings import LoopSettings
from gourmetgram.loop.store import Store
from gourmetgram.objectstore import ObjectStore

log = logging.getLogger("capture_sink")


class LoopCollector:
    """Feedback counts, production accuracy and calibration error, captured samples per class, label
    sources and the labelling backlog, read from the database at scrape time (so they survive restarts and
    count what every replica stored)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self):
        fb = GaugeMetricFamily("gourmetgram_feedback", "User feedback by model version and kind "
                               "(correct, wrong, corrected, not_food, inappropriate)",
                               labels=["model_version", "kind"])
        acc = GaugeMetricFamily("gourmetgram_production_accuracy", "Production accuracy per model "
                                "version from feedback, from labels, from labels of the random share",
                                labels=["model_version", "source"])
        n = GaugeMetricFamily("gourmetgram_production_accuracy_samples", "Samples behind "
                              "gourmetgram_production_accuracy", labels=["model_version", "source"])
        # All-time totals from the database: every replica reports the same numbers (dashboards
        # take max over replicas) and a restart loses nothing; delta()/increase() give per day.
        captured = GaugeMetricFamily("gourmetgram_captured_samples", "Complete captured samples by stage, "
                                     "model version and predicted class", labels=["stage", "model_version",
                                                                                  "class_name"])
        labels = GaugeMetricFamily("gourmetgram_labels", "Ground-truth labels by source (annotator, user "
                                   "correction) and class", labels=["source", "class_name"])
        backlog = GaugeMetricFamily("gourmetgram_labelling_backlog", "Queued samples not labelled yet: waiting "
                                    "(not in Label Studio yet) or in_label_studio", labels=["state"])
        ece = GaugeMetricFamily("gourmetgram_production_ece", "Expected calibration error (15 bins) of the served "
                                "confidence per model version, on labelled samples and on the random share's",
                                labels=["model_version", "source"])
        ece_n = GaugeMetricFamily("gourmetgram_production_ece_samples", "Labelled samples behind "
                                  "gourmetgram_production_ece", labels=["model_version", "source"])
        try:
            with self.store.session() as s:
                for (stage, version, class_name), count in quality.captured_counts(s).items():
                    captured.add_metric([stage, version, class_name], count)
                for (source, class_name), count in quality.label_counts(s).items():
                    labels.add_metric([source, class_name], count)
                for state, count in quality.labelling_backlog(s).items():
                    backlog.add_metric([state], count)
                for (version, kind), count in quality.feedback_counts(s).items():
                    fb.add_metric([version, kind], count)
                for version, by_source in quality.production_accuracy(s).items():
                    for source, a in by_source.items():
                        if a.total:
                            acc.add_metric([version, source], a.value)
                            n.add_metric([version, source], a.total)
                for version, errors in quality.calibration_by_version(s).items():
                    for source, e in errors.items():
                        ece.add_metric([version, source], e.ece)
                        ece_n.add_metric([version, source], e.n)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database blinked
            log.exception("loop metrics: database query failed")
        yield from (fb, acc, n, captured, labels, backlog, ece, ece_n)


class CaptureMetrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("capture_events_received", "Logger events received", ["type"], registry=r)
        self.stored = Counter("capture_events_stored", "Events whose samples were committed", ["type"], registry=r)
        self.duplicates = Counter("capture_events_duplicate", "Redelivered events (stored once)", registry=r)
        self.sampled_out = Counter("capture_events_sampled_out", "Events not kept by the stage's sampling rate",
                                   ["stage"], registry=r)
        self.rejected = Counter("capture_events_rejected", "Events refused (503) because the sink was busy; "
                                "the broker retries them", registry=r)
        self.invalid = Counter("capture_events_invalid", "Events that are not logger CloudEvents (400)", registry=r)
        self.errors = Counter("capture_store_errors", "Events that could not be stored (503, retried)", registry=r)
        self.unsupported = Counter("capture_events_unsupported", "Events with no encoded image", registry=r)
        self.seconds = Histogram("capture_store_seconds", "Time to store one event (object + commit)",
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                 registry=r)
        self.feedback_requests = Counter("feedback_requests", "Feedback API answers by status code",
                                         ["code"], registry=r)
        r.register(LoopCollector(store))


class CaptureService:
    def __init__(self, store: Store, objects: ObjectStore, settings: LoopSettings,
                 class_names: Sequence[str]) -> None:
        self.store, self.objects, self.settings = store, objects, settings
        self.class_names = list(class_names)
        self.capture = Capture(store, objects, settings, class_names)
        self.metrics = CaptureMetrics(store)
        self.in_flight = 0
        self._lock = threading.Lock()

    def _enter(self) -> bool:
        with self._lock:
            if self.in_flight >= self.settings.capture.max_in_flight:
                return False
            self.in_flight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    async def receive(self, request: Request) -> Response:
        limit = self.settings.capture.max_event_bytes
        body = await request.body()
        if len(body) > limit:
            self.metrics.invalid.inc()
            return JSONResponse({"error": f"event over {limit} bytes"}, status_code=413)
        try:
            event = decode_event(request.headers, body, self.class_names)
        except BadEvent as exc:
            self.metrics.invalid.inc()
            return JSONResponse({"error": str(exc)}, status_code=400)
        kind = "request" if event.is_request else "response"
        self.metrics.received.labels(kind).inc()
        if not self._enter():
            self.metrics.rejected.inc()
            return JSONResponse({"error": "capture sink busy; retry"}, status_code=503,
                                headers={"retry-after": "1"})
        started = time.perf_counter()
        try:
            result = await run_in_threadpool(self.capture.handle, event)
        except Exception as exc:  # noqa: BLE001 - the store is down: not acknowledged, the broker retries
            self.metrics.errors.inc()
            log_json("capture", "store_failed", event.id, type=kind, error=f"{type(exc).__name__}: {exc}")
            return JSONResponse({"error": f"could not store the event: {type(exc).__name__}"}, status_code=503)
        finally:
            self._leave()
        seconds = time.perf_counter() - started
        outcome = result["outcome"]
        if outcome == "stored":
            self.metrics.stored.labels(kind).inc()
            self.metrics.seconds.observe(seconds)
        elif outcome == "duplicate":
            self.metrics.duplicates.inc()
        elif outcome == "sampled_out":
            self.metrics.sampled_out.labels(result.get("stage") or "unknown").inc()
        else:
            self.metrics.unsupported.inc()
        log_json("capture", outcome, event.id, type=kind, ms=round(seconds * 1000, 2),
                 stage=result.get("stage"), samples=result.get("samples"))
        return JSONResponse({"id": event.id, **result}, status_code=200)

    async def feedback(self, request: Request) -> Response:
        fs = self.settings.feedback
        declared = request.headers.get("content-length")
        try:
            check_content_type(request.headers.get("content-type"))  # JSON only: no cross-site simple request
            if declared and declared.isdigit() and int(declared) > fs.max_body_bytes:
                raise FeedbackError(413, f"feedback body is {declared} bytes; the limit is {fs.max_body_bytes}")
            # the caller's address as uvicorn resolves it (X-Forwarded-For from a trusted proxy:
            # --forwarded-allow-ips / FORWARDED_ALLOW_IPS; locally the gateway)
            client = client_key(request.client.host if request.client else None,
                                request.headers.get(CLIENT_ID_HEADER), fs.client_id_from)
            body = await request.body()
            fb = parse_feedback(body, self.class_names, fs.max_body_bytes)
            result, created = await run_in_threadpool(record_feedback, self.store, fb, fs.wait_for_capture_s,
                                                      client, fs)
        except FeedbackError as exc:
            self.metrics.feedback_requests.labels(str(exc.status)).inc()
            log_json("capture", "feedback_refused", None, status=exc.status, reason=str(exc)[:200])
            headers = {"retry-after": str(exc.retry_after_s)} if exc.retry_after_s else None
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
        except Exception as exc:  # noqa: BLE001 - the database is a dependency: 503, never a 500
            self.metrics.feedback_requests.labels("503").inc()
            log.exception("feedback could not be stored")
            return JSONResponse({"error": f"the feedback store is unavailable ({type(exc).__name__}); "
                                          "try again shortly"}, status_code=503)
        self.metrics.feedback_requests.labels("200").inc()
        log_json("capture", "feedback", result["inference_id"], created=created, correct=result["correct"],
                 correct_class=result["correct_class"], flag=result["flag"], client=client,
                 label_status=result["label_status"])
        return JSONResponse(result, status_code=200)

    def status(self) -> dict:
        with self.store.session() as s:
            out = quality.status(s)
        out["in_flight"] = self.in_flight
        out["db"] = self.store.safe_url  # never the password of a postgresql URL
        out["objects"] = self.objects.url
        return out

    def summary(self) -> dict:
        with self.store.session() as s:
            return quality.summary(s, self.settings.policy)

    def thumbnail(self, sample_id: str) -> bytes | None:
        """A JPEG at most THUMBNAIL_SIDE pixels a side of the captured photo, or None when the
        sample (or its image) was never captured."""
        sample = self.store.get_sample(sample_id)
        if sample is None or sample.object_key is None:
            return None
        return make_thumbnail(self.objects.get(sample.object_key))


THUMBNAIL_SIDE = 128


def make_thumbnail(blob: bytes) -> bytes:
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(blob)).convert("RGB")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def create_app(service: CaptureService) -> Starlette:
    async def metrics(_request: Request) -> Response:
        text = await asyncio.to_thread(generate_latest, service.metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def status(_request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.status))

    async def summary(_request: Request) -> Response:
        """Read-only counts for the operator page; the database down is a 503 in words."""
        try:
            return JSONResponse(await run_in_threadpool(service.summary))
        except Exception as exc:  # noqa: BLE001 - a dependency: 503, never a 500
            log.exception("loop summary: database query failed")
            return JSONResponse({"error": f"the feedback store's database cannot be read "
                                          f"({type(exc).__name__}); try again shortly"}, status_code=503)

    async def thumbnail(request: Request) -> Response:
        """Read-only: a small JPEG of one captured photo (the operator page shows the most atypical)."""
        sample_id = request.path_params["sample_id"]
        try:
            data = await run_in_threadpool(service.thumbnail, sample_id)
        except Exception as exc:  # noqa: BLE001 - the database or the object store: 503 in words
            log.exception("thumbnail of %s failed", sample_id)
            return JSONResponse({"error": f"the captured photo cannot be read ({type(exc).__name__}); "
                                          "try again shortly"}, status_code=503)
        if data is None:
            return JSONResponse({"error": f"no captured photo {sample_id!r} (not captured, or sampled out)"},
                                status_code=404)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/", service.receive, methods=["POST"]),
        Route(FEEDBACK_PATH, service.feedback, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route(LOOP_SUMMARY_PATH, summary, methods=["GET"]),
        Route(SAMPLE_THUMBNAIL_PATH + "/{sample_id:path}", thumbnail, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])
