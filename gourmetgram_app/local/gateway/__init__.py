"""The local gateway: a stand-in for the Istio/Knative ingress in front of the transformer.

On the cluster a request to an InferenceService passes the Istio ingress, which picks a
Knative revision (by ``canaryTrafficPercent`` or by tag), and that revision's queue-proxy,
which measures it (``kn_serving_invocation_duration_seconds``, Knative 1.21; the names are
in gourmetgram/metric_names.py), and
the KServe agent, which sends the request and its response to the logger's sink as
CloudEvents. Locally this small ASGI app does the same for transformer processes on
localhost, under the SAME metric names, so the same PromQL, dashboards and alert rules work
on both:

* **Traffic split** (KServe's ``ksvc_reconciler``): with a canary at P%, the ``latest``
  revision gets P% and the ``prev`` revision (the last one rolled out) 100-P%; 0 pins all
  traffic to ``prev`` (rollback); promoting gives ``latest`` 100% and retires ``prev``.
* **Tag routing**: a Host header ``latest-<isvc>...``/``prev-<isvc>...`` (KServe's tag
  hostnames) or the header ``X-Gourmetgram-Tag: latest|prev`` picks the revision. Every
  response names its revision in ``X-Gourmetgram-Revision`` (and ``X-Gourmetgram-Tag``).
* **Paired components**: a revision is one transformer + one Triton (``RevisionPair``); the
  gateway routes to a transformer, which only knows its own Triton, so a request never
  crosses from a canary transformer to a stable predictor (kserve#1669).
* **Inference logger** (``logger.mode``/``url`` of the manifest): binary-mode CloudEvents
  (``ce-type`` ``org.kubeflow.serving.inference.request|response``, one ``ce-id`` per
  pair, extensions ``inferenceservicename``, ``namespace``, ``component``, ``endpoint``),
  sent off the request path through a bounded queue; a slow or dead sink never delays or
  fails a prediction; what cannot be queued or delivered is counted in
  ``logger_events_dropped_total``.
* **Inference id**: every prediction response carries ``X-Inference-Id``, the ``ce-id`` of its
  logger events (the caller's ``ce-id`` when it sent a valid one, as KServe's agent keeps it),
  so user feedback and the captured sample meet on it. The transformer gets it too, and every
  hop writes a JSON log line with it (:mod:`gourmetgram.jsonlog`). Logger events also carry two
  local extensions, ``revision`` and ``modelversion`` (what served the request).
* **Feedback**: ``POST /v1/feedback`` is routed to the capture/feedback service
  (``--feedback-url``), next to predict on the public path; 503 when none is configured.
* **Shadow** (Istio's VirtualService ``mirror``/``mirrorPercentage`` on the cluster): a share
  of model requests is also copied, fire-and-forget, to a shadow revision whose answers go
  only to the logger's sink (``ce-endpoint: shadow``, ``ce-shadow: true``, the mirrored
  request's ``ce-id``), never to the client (:mod:`gourmetgram_app.local.shadow`).
* **Crashes**: a revision whose transformer or Triton is down answers 503 with
  ``Retry-After`` until a probe finds it ready again (:mod:`gourmetgram_app.local.readiness`);
  the split does not change by itself. Canary pairs started here are restarted by this
  process's :class:`~gourmetgram_app.local.supervisor.Supervisor`.
* **Control** (the Knative controller's part, localhost only): ``GET/POST
  /_gourmetgram/rollout`` starts a canary revision from a bundle, sets its percentage,
  promotes or rolls back (``gourmetgram rollout`` drives it); ``GET /_gourmetgram/targets``
  lists every revision's metrics endpoints in Prometheus HTTP-SD form. A POST needs the
  stack's control token, JSON, and a bundle from the model store; tag routing needs the
  token too (:mod:`gourmetgram.control`).
* **Size limits**: a body over ``max_body_bytes`` is a 413 before it is read whole or
  logged (:mod:`gourmetgram.bodylimit`); the logger queue is bounded by bytes as well.

The package is split by concern: :mod:`.routing` (split, tags, forwarding, feedback),
:mod:`.logger` (the inference logger), :mod:`.control` (the control API), :mod:`.discovery`
(where revisions listen, Prometheus targets), :mod:`.server` (state, metrics, the app) and
:mod:`.cli` (the command line). The names other modules use are importable from here.

Run: ``python -m gourmetgram_app.local.gateway --manifest inference_services/staging.yaml
--revision food11-staging-predictor-00001=http://127.0.0.1:8080``.
"""

from gourmetgram_app.local.gateway.cli import main, parse_args
from gourmetgram_app.local.gateway.control import CONTROL_PREFIX, WARMUP_REQUESTS
from gourmetgram_app.local.gateway.discovery import Revision, http_sd_targets
from gourmetgram_app.local.gateway.logger import LOGGER_QUEUE_BYTES, InferenceLogger
from gourmetgram_app.local.gateway.routing import (
    FEEDBACK_MAX_BODY_BYTES,
    FEEDBACK_PATH,
    HOP_HEADERS,
    INFERENCE_ID_RE,
    LATEST,
    MAX_BODY_BYTES,
    PREV,
    REVISION_HEADER,
    SHADOW,
    TAG_HEADER,
)
from gourmetgram_app.local.gateway.server import Gateway

__all__ = [
    "CONTROL_PREFIX", "FEEDBACK_MAX_BODY_BYTES", "FEEDBACK_PATH", "HOP_HEADERS", "INFERENCE_ID_RE",
    "LATEST", "LOGGER_QUEUE_BYTES", "MAX_BODY_BYTES", "PREV", "REVISION_HEADER", "SHADOW",
    "TAG_HEADER", "WARMUP_REQUESTS", "Gateway", "InferenceLogger", "Revision", "http_sd_targets",
    "main", "parse_args",
]
