"""The request metric of Knative's queue-proxy, as the pinned Knative Serving exports it.

One definition for everything that reads or writes it: the local gateway (which mimics
queue-proxy), the canary analysis's PromQL, and the tests that check the alert rules and
dashboards (charts/gourmetgram/rules, charts/gourmetgram/dashboards) name only these.

Source, Knative Serving ``knative-v1.21.1`` (the version infra/versions.env pins, which
KServe v0.20.0's ``kserve-deps.env`` pins):

* ``pkg/queue/request_metric.go``: an OpenTelemetry ``Float64Histogram``
  ``kn.serving.invocation.duration``, unit ``s``, buckets ``latencyBounds`` (below), one
  attribute per observation: ``http.response.status_code`` (semconv; probes not recorded).
  It replaced ``revision_app_request_count``/``revision_app_request_latencies`` (ms) in 1.19.
* knative.dev/pkg ``observability/metrics/prometheus_enabled.go`` (the commit serving 1.21.1's
  go.mod pins, 4a022ed9999a): the OTel Prometheus exporter with
  ``otlptranslator.UnderscoreEscapingWithSuffixes``, so the series are
  ``kn_serving_invocation_duration_seconds_{bucket,sum,count}`` with the label
  ``http_response_status_code``; it is served on ``http-usermetric`` (:9091) only when
  ``config-observability`` has ``request-metrics-protocol: prometheus`` (the install sets it).
* ``pkg/queue/sharedmain/otel.go``: ``kn.revision.name``, ``kn.configuration.name``,
  ``k8s.namespace.name`` are *resource* attributes, which this exporter puts on
  ``target_info`` only. The chart's PodMonitor therefore sets the same three labels from the
  pod's Knative labels (charts/gourmetgram/templates/podmonitor.yaml), and the gateway emits
  them directly: the label names below are the semconv names after the same translation.
"""

from __future__ import annotations

# Knative Serving version these names were read from (infra/versions.env KNATIVE_SERVING_VERSION).
KNATIVE_SERVING_VERSION = "knative-v1.21.1"

REQUEST_DURATION = "kn_serving_invocation_duration_seconds"
REQUEST_DURATION_BUCKET = f"{REQUEST_DURATION}_bucket"
# A histogram's _count is the request counter: queue-proxy has no separate one any more.
REQUEST_COUNT = f"{REQUEST_DURATION}_count"

# Labels of the request histogram.
STATUS_CODE = "http_response_status_code"  # "200", "503": no status class label any more
REVISION = "kn_revision_name"
CONFIGURATION = "kn_configuration_name"
NAMESPACE = "k8s_namespace_name"
# Set by the PodMonitor's relabelings on the cluster, by the gateway locally.
RESOURCE_LABELS = (NAMESPACE, CONFIGURATION, REVISION)
LABELS = (*RESOURCE_LABELS, STATUS_CODE)

# PromQL matcher for 5xx responses (the status code is a number, not a class).
SERVER_ERROR = f'{STATUS_CODE}=~"5.."'

# request_metric.go latencyBounds (seconds).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

# What Knative <= 1.18 exported; nothing may name these any more (tests check).
RETIRED = ("revision_app_request_count", "revision_app_request_latencies")
