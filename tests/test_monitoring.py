"""Monitoring as code: alert rules (promtool), dashboards, and the metric names they use.

One rules file (charts/gourmetgram/rules/gourmetgram.rules.yml) is both the chart's
PrometheusRule and the local Prometheus's rule file. Its promtool unit tests fire every
alert with synthetic series while healthy neighbours stay quiet. Every metric a rule or a
dashboard names must be one the code exports: the names are collected from the
prometheus_client definitions in transformers/, detectors/, capture/ and gourmetgram/
(contract 2; metrics and custom collectors' metric families), plus kserve's own (scanned from
the installed package) and Triton's (allow-listed); a ``level:metric:operation`` name must be
recorded by a rule. Every dashboard query parses as PromQL (promtool, Grafana's variables
substituted).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from gourmetgram import manifests, metric_names
from gourmetgram.constants import PRODUCTION, REPO_ROOT, STAGING

# Code that exports metrics (contract 2): the transformer, the detector, the capture sink, the
# gateway, broker and retrain receiver.
METRIC_SOURCE_DIRS = ("transformers", "detectors", "capture", "gourmetgram", "gourmetgram_app")
# Series no prometheus_client definition here produces. Kept small on purpose, each with why:
EXTERNAL_METRIC_PATTERNS = (
    # Triton's C++ metrics endpoint (:8002): nv_inference_*, nv_gpu_*, nv_cpu_*.
    re.compile(r"nv_[a-z0-9_]+"),
    # Prometheus's own per-target series (1 while the target answers a scrape).
    re.compile(r"up"),
)
# Knative queue-proxy's request histogram: the names are defined once, in
# gourmetgram/metric_names.py, and the local gateway exports them with prometheus_client.
METRIC_NAMES_FILE = REPO_ROOT / "gourmetgram" / "metric_names.py"

_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
                    "group_right", "offset", "inf", "nan"}
_METRIC_CLASSES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
# Custom collectors (values read at scrape time, e.g. from the loop database) yield families.
_FAMILY_KINDS = {"CounterMetricFamily": "Counter", "GaugeMetricFamily": "Gauge", "HistogramMetricFamily": "Histogram",
                 "SummaryMetricFamily": "Summary", "InfoMetricFamily": "Info"}


# --- metric names exported by code ------------------------------------------------------

def _exported_series(kind: str, name: str) -> set[str]:
    """The series names prometheus_client exposes for one metric definition."""
    if kind == "Counter":
        base = name[: -len("_total")] if name.endswith("_total") else name
        return {f"{base}_total", f"{base}_created"}
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Info":
        return {f"{name}_info"}
    return {name}


def _string(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return constants.get(node.attr)  # ``qp.REQUEST_DURATION`` (metric_names imported as a module)
    return None


def string_constants(tree: ast.AST) -> dict[str, str]:
    """Module-level ``NAME = "text"`` and ``NAME = f"{OTHER}_suffix"`` assignments."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        value = node.value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found[node.targets[0].id] = value.value
        elif isinstance(value, ast.JoinedStr):
            parts = [p.value if isinstance(p, ast.Constant) else found.get(getattr(p.value, "id", ""))
                     for p in value.values]
            if all(isinstance(p, str) for p in parts):
                found[node.targets[0].id] = "".join(parts)
    return found


def metric_name_constants() -> dict[str, str]:
    """The shared metric names (gourmetgram/metric_names.py), for code that imports them."""
    return string_constants(ast.parse(METRIC_NAMES_FILE.read_text()))


def metric_definitions(source: str) -> dict[str, str]:
    """``{metric name: kind}`` for every prometheus_client metric constructed in ``source``.

    Handles ``Counter("x", ...)``, ``prometheus_client.Counter(name="x")``, a module-level
    string constant or a name from gourmetgram/metric_names.py (``qp.REQUEST_DURATION``) as the
    name, and ``namespace=``/``subsystem=`` prefixes.
    """
    tree = ast.parse(source)
    constants = {**metric_name_constants(), **string_constants(tree)}
    found = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        kind = _FAMILY_KINDS.get(kind or "", kind)
        if kind not in _METRIC_CLASSES:
            continue
        kwargs = {kw.arg: kw.value for kw in node.keywords if kw.arg}
        name_node = node.args[0] if node.args else kwargs.get("name")
        name = _string(name_node, constants) if name_node is not None else None
        if not name:
            continue
        prefix = [_string(kwargs[k], constants) for k in ("namespace", "subsystem") if k in kwargs]
        found["_".join([p for p in prefix if p] + [name])] = kind
    return found


def scan_metric_definitions(roots: list[Path]) -> dict[str, str]:
    """Metric definitions in every ``*.py`` under ``roots``."""
    found: dict[str, str] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            if "__pycache__" in path.parts:
                continue
            try:
                found.update(metric_definitions(path.read_text()))
            except SyntaxError:
                continue
    return found


def exported_series(definitions: dict[str, str]) -> set[str]:
    return {series for name, kind in definitions.items() for series in _exported_series(kind, name)}


def kserve_metric_file() -> Path:
    spec = importlib.util.find_spec("kserve")  # located, not imported (it is slow)
    return Path(next(iter(spec.submodule_search_locations))) / "metrics.py"


# --- metric names referenced by rules and dashboards ------------------------------------

def referenced_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords, labels and ranges removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = match.group(0)
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if token.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def rule_expressions(rules: dict) -> dict[str, str]:
    return {r.get("alert") or r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def dashboard_expressions(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.match(r"\s*label_values\(\s*([^,)]+)", query or "")
        if var.get("type") == "query" and match:
            exprs.append(match.group(1))
    return exprs


def recorded_names(rules: dict) -> set[str]:
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def unknown_metrics(expressions: dict[str, str], exported: set[str]) -> dict[str, set[str]]:
    """``{where: names}`` for metric names nobody exports; pass the recording rules' names in
    ``exported`` (a ``level:metric:operation`` name no rule records is unknown too)."""
    unknown = {}
    for where, expr in expressions.items():
        missing = {
            n for n in referenced_metrics(expr)
            if n not in exported and not any(p.fullmatch(n) for p in EXTERNAL_METRIC_PATTERNS)
        }
        if missing:
            unknown[where] = missing
    return unknown


def load_dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(manifests.DASHBOARD_DIR.glob("*.json"))}


def all_monitoring_expressions() -> dict[str, str]:
    exprs = {f"rule {k}": v for k, v in rule_expressions(yaml.safe_load(manifests.RULES_FILE.read_text())).items()}
    for name, dashboard in load_dashboards().items():
        for i, expr in enumerate(dashboard_expressions(dashboard)):
            exprs[f"dashboard {name} #{i}"] = expr
    return exprs


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # Required, never skipped: scripts/setup.sh installs it (Debian's `prometheus` package).
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/setup.sh as root, or `apt-get install prometheus`"
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


# --- rules ------------------------------------------------------------------------------

def test_rules_file_passes_promtool_check():
    result = _promtool("check", "rules", str(manifests.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(manifests.RULES_FILE.read_text())
    count = sum(len(g["rules"]) for g in rules["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_fire_every_alert():
    result = _promtool("test", "rules", manifests.RULES_TEST_FILE.name, cwd=manifests.RULES_TEST_FILE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in yaml.safe_load(manifests.RULES_FILE.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert alerts >= {"GourmetGramHighErrorRate", "GourmetGramHighLatencyP95", "GourmetGramLowConfidence",
                      "GourmetGramDriftDetected", "GourmetGramDetectorBacklog"}
    tests = yaml.safe_load(manifests.RULES_TEST_FILE.read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    assert fired == alerts, f"alerts without a firing test: {alerts - fired}"
    assert any(not c.get("exp_alerts") for c in cases)  # and a case where nothing fires yet
    # every recording rule's value is checked by an expression test too
    checked = " ".join(c["expr"] for t in tests for c in t.get("promql_expr_test", []))
    recorded = recorded_names(yaml.safe_load(manifests.RULES_FILE.read_text()))
    assert {r for r in recorded if r not in checked} <= {"gourmetgram:production_feedback:increase_1h"}


def test_promtool_tests_catch_a_broken_threshold(tmp_path):
    """The unit tests are not vacuous: loosen one threshold and they fail."""
    for name in (manifests.RULES_FILE.name, manifests.RULES_TEST_FILE.name):
        shutil.copy(manifests.RULES_FILE.parent / name, tmp_path / name)
    rules = tmp_path / manifests.RULES_FILE.name
    text = rules.read_text()
    assert "> 0.05" in text
    rules.write_text(text.replace("> 0.05", "> 0.5", 1))
    result = _promtool("test", "rules", manifests.RULES_TEST_FILE.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "GourmetGramHighErrorRate" in result.stdout + result.stderr


def test_the_chart_renders_the_same_rules_file(tmp_path):
    objects = manifests.render_objects(PRODUCTION)
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(manifests.RULES_FILE.read_text())["groups"]
    assert rule["metadata"]["labels"]["release"]  # kube-prometheus-stack's ruleSelector
    extracted = tmp_path / "from-chart.rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert _promtool("check", "rules", str(extracted)).returncode == 0
    # one release carries the cluster-wide rules and dashboards, not both stages
    assert not any(o["kind"] == "PrometheusRule" for o in manifests.render_objects(STAGING))


# --- dashboards -------------------------------------------------------------------------

def test_dashboards_are_valid_and_shipped_as_configmaps():
    dashboards = load_dashboards()
    assert set(dashboards) == {"service.json", "predictions.json", "drift.json", "triton.json",
                               "model-quality.json", "data.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, dashboard in dashboards.items():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(set(ids)) == len(ids), name
        assert all(p.get("targets") for p in dashboard["panels"]), name
        cells: set[tuple[int, int]] = set()  # panels inside Grafana's 24 columns, none on top of another
        for p in dashboard["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, (name, p["title"])
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, (name, p["title"], "overlaps another panel")
            cells |= mine
            assert all(t["refId"] and t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), name
    configmaps = {
        o["metadata"]["name"]: o for o in manifests.render_objects(PRODUCTION) if o["kind"] == "ConfigMap"
    }
    for name, dashboard in dashboards.items():
        cm = configmaps[f"gourmetgram-dashboard-{name.removesuffix('.json')}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][name]) == dashboard


# Grafana's variables, as Grafana substitutes them before the query reaches Prometheus.
_GRAFANA_RANGES = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}")
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")


def as_prometheus_sees_it(expr: str) -> str:
    return _GRAFANA_VARIABLE.sub("x", _GRAFANA_RANGES.sub("5m", expr))


def test_every_dashboard_query_parses_as_promql(tmp_path):
    """promtool parses each panel's query (as a recording rule), so a typo never ships."""
    exprs = {f"{name} #{i}": as_prometheus_sees_it(e) for name, d in load_dashboards().items()
             for i, e in enumerate(dashboard_expressions(d)) if "(" in e or "{" in e or ":" in e}
    assert len(exprs) > 40
    rules = {"groups": [{"name": "dashboards", "rules": [{"record": f"dashboard:query_{i}:check", "expr": e}
                                                        for i, e in enumerate(exprs.values())]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    # and the check is not vacuous: a broken query is caught
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "bad:query:check", "expr": as_prometheus_sees_it("sum by (a) (rate(x[$__rate_interval])")}]}]}))
    assert _promtool("check", "rules", str(path)).returncode != 0


def _queries(dashboard: dict) -> dict[str, str]:
    return {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}


def test_model_quality_dashboard_shows_accuracy_feedback_backlog_and_the_last_retrain():
    q = _queries(load_dashboards()["model-quality.json"])
    joined = " ".join(q.values())
    # production accuracy by model version over time: the 1h feedback window and the all-time sources
    assert any("gourmetgram:production_accuracy:ratio_1h" in e for e in q.values())
    assert "by (model_version, source) (gourmetgram_production_accuracy)" in joined
    assert "gourmetgram:feedback_rate:ratio_1h" in joined and "gourmetgram:production_feedback:increase_1h" in joined
    assert "gourmetgram_labelling_backlog" in joined
    assert "retrain_last_start_timestamp_seconds" in joined
    assert "by (run_id, reasons, status, version) (retrain_last_run_info)" in joined
    assert "gourmetgram:tag_kept:ratio_1h" in joined  # the business metric


def test_data_dashboard_shows_captures_per_class_and_day_label_sources_queues_and_drift():
    dashboard = load_dashboards()["data.json"]
    per_day = next(p for p in dashboard["panels"] if "per class and day" in p["title"])
    assert per_day["interval"] == "1d" and "[1d]" in per_day["targets"][0]["expr"]
    assert per_day["targets"][0]["expr"].startswith("sum by (class_name)")
    joined = " ".join(_queries(dashboard).values())
    assert "sum by (source)" in joined and "gourmetgram_labels" in joined
    assert {"gourmetgram_labelling_backlog", "broker_queue", "drift_backlog", "drift_test_stat"} <= referenced_metrics(joined)
    # the capture sink runs replicas that report the same database totals: max before any sum
    for expr in _queries(dashboard).values():
        if "gourmetgram_captured_samples" in expr:
            assert "max by (stage, model_version, class_name)" in expr, expr


# --- metric names -----------------------------------------------------------------------

def test_promql_name_extraction():
    expr = ('sum by (le, revision) (rate(foo_bucket{a="b", c=~"x|y(z)"}[$__rate_interval])) '
            '/ on(job) group_left bar_total offset 5m > bool 1e3 and baz:rate5m or max(qux) without (le)')
    assert referenced_metrics(expr) == {"foo_bucket", "bar_total", "baz:rate5m", "qux"}


def test_scanner_reads_prometheus_client_definitions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import prometheus_client\nfrom prometheus_client import Counter, Gauge, Histogram\n"
        "NAME = 'drift_backlog'\n"
        "A = Counter('predicted_class_total', 'doc', ['class_name'])\n"
        "B = prometheus_client.Histogram(name='prediction_confidence', documentation='d')\n"
        "C = Gauge(NAME, 'queued events')\n"
        "D = Counter('sent', 'd', namespace='logger_events')\n"
        "from prometheus_client.core import GaugeMetricFamily\n"
        "E = GaugeMetricFamily('gourmetgram_labels', 'from the database', labels=['source'])\n"
    )
    definitions = scan_metric_definitions([tmp_path])
    assert definitions == {"predicted_class_total": "Counter", "prediction_confidence": "Histogram",
                           "drift_backlog": "Gauge", "logger_events_sent": "Counter", "gourmetgram_labels": "Gauge"}
    series = exported_series(definitions)
    assert {"predicted_class_total", "prediction_confidence_bucket", "prediction_confidence_count",
            "drift_backlog", "logger_events_sent_total"} <= series
    assert "prediction_confidence" not in series  # a histogram has no bare series


def test_checker_flags_a_metric_nobody_exports():
    exported = exported_series(scan_metric_definitions([kserve_metric_file()]))
    assert "request_predict_seconds_bucket" in exported  # kserve's own, scanned from the package
    recorded = recorded_names(yaml.safe_load(manifests.RULES_FILE.read_text()))
    assert "gourmetgram:tag_kept:ratio_1h" in recorded
    unknown = unknown_metrics(
        {"ok": "rate(request_predict_seconds_count[5m])", "triton": "rate(nv_inference_count[1m])",
         "bad": "increase(nobody_exports_this_total[5m]) > 0", "rule": "gourmetgram:tag_kept:ratio_1h < 0.9",
         "no rule": "gourmetgram:nobody_records:ratio_1h"},
        exported | recorded,
    )
    assert unknown == {"bad": {"nobody_exports_this_total"}, "no rule": {"gourmetgram:nobody_records:ratio_1h"}}


def test_every_metric_in_rules_and_dashboards_is_exported():
    roots = [REPO_ROOT / d for d in METRIC_SOURCE_DIRS]
    ours = scan_metric_definitions(roots)
    assert ours, "found no prometheus_client metric definitions: the scan is broken"
    exported = exported_series(ours) | exported_series(scan_metric_definitions([kserve_metric_file()]))
    # the loop's metrics: the capture sink's database families and the retrain receiver's
    assert {"gourmetgram_captured_samples", "gourmetgram_labels", "gourmetgram_labelling_backlog",
            "retrain_last_run_info", "loop_feedback_answers_total"} <= exported
    recorded = recorded_names(yaml.safe_load(manifests.RULES_FILE.read_text()))
    unknown = unknown_metrics(all_monitoring_expressions(), exported | recorded)
    assert unknown == {}, f"named by rules/dashboards but exported by no code and recorded by no rule: {unknown}"


# --- queue-proxy's metric: the names of the installed Knative, one definition ------------

QUEUE_PROXY_SERIES = re.compile(re.escape(metric_names.REQUEST_DURATION) + r"_(?:bucket|sum|count)\b")


def _label_names(expr: str, metric: str = r"\w*") -> set[str]:
    """Label names in the matchers ``{a="x", b=~"y"}`` of ``metric`` (a regex) and in every
    ``by (...)``/``without (...)``."""
    names = set()
    for matcher in re.findall(rf"(?<![\w:])(?:{metric})\{{([^}}]*)\}}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        names |= {m.group(1) for m in re.finditer(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matcher)}
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    return names


def queue_proxy_expressions() -> dict[str, str]:
    """Every rule, dashboard and canary-analysis expression that reads queue-proxy's metric."""
    from gourmetgram.rollout.analysis import RolloutState, queries

    state = RolloutState("food11", "ns", "food11-predictor", "food11", "food11-predictor-00001",
                         "food11-predictor-00002", 10)
    exprs = {**all_monitoring_expressions(), **{f"analysis {k}": v for k, v in queries(state, "2m").items()}}
    return {k: v for k, v in exprs.items() if QUEUE_PROXY_SERIES.search(v)}


def test_retired_knative_names_are_gone():
    """Knative 1.19+ queue-proxy no longer exports revision_app_request_*: nothing may read them."""
    texts = {str(p): p.read_text() for p in [manifests.RULES_FILE, manifests.RULES_TEST_FILE,
                                              *manifests.DASHBOARD_DIR.glob("*.json"),
                                              *(REPO_ROOT / "inference_services").glob("*.yaml")]}
    for root in METRIC_SOURCE_DIRS:
        texts |= {str(p): p.read_text() for p in (REPO_ROOT / root).rglob("*.py") if p != METRIC_NAMES_FILE}
    for retired in metric_names.RETIRED:
        assert not [where for where, text in texts.items() if retired in text], retired


def test_queue_proxy_series_use_only_the_defined_labels():
    exprs = queue_proxy_expressions()
    # the request panels, both serving alerts and the three analysis queries read it
    assert {"rule GourmetGramHighErrorRate", "rule GourmetGramHighLatencyP95",
            "rule GourmetGramLoggerEventsMissing", "analysis requests",
            "analysis errors", "analysis p95_ms"} <= set(exprs)
    assert sum(k.startswith("dashboard service.json") for k in exprs) >= 5
    allowed = set(metric_names.LABELS) | {"le"}
    for where, expr in exprs.items():
        if where.startswith("dashboard") and "(" not in expr:
            continue  # a label_values() variable
        labels = _label_names(expr, QUEUE_PROXY_SERIES.pattern)
        assert labels <= allowed, (where, labels - allowed)
    # 5xx are selected by status code (Knative 1.21 has no status-class label)
    assert metric_names.SERVER_ERROR in exprs["rule GourmetGramHighErrorRate"]
    assert metric_names.SERVER_ERROR in exprs["analysis errors"]


def test_label_extraction():
    expr = 'sum by (a, le) (rate(m_bucket{b="x{y}", c=~"5.."}[5m])) / sum without (d) (m{e!="1"})'
    assert _label_names(expr) == {"a", "le", "b", "c", "d", "e"}
    assert _label_names(expr, "m_bucket") == {"a", "le", "b", "c", "d"}


def test_podmonitor_gives_queue_proxy_series_the_labels_the_queries_select_on():
    """On the cluster the revision/configuration/namespace labels come from the PodMonitor
    (Knative 1.21 puts them on target_info only): it must set exactly the defined names. Queue-proxy's
    series arrive merged with Triton's on KServe's aggregation port (aggr-metric)."""
    monitor = next(o for o in manifests.render_objects(PRODUCTION)
                   if o["kind"] == "PodMonitor" and o["metadata"]["name"] == "food11")
    endpoint = next(e for e in monitor["spec"]["podMetricsEndpoints"] if e.get("port") == "aggr-metric")
    targets = {r["targetLabel"] for r in endpoint["relabelings"] if r.get("sourceLabels")}
    assert targets == set(metric_names.RESOURCE_LABELS)


def test_the_gateway_exports_the_defined_series():
    """The local gateway's /metrics text has queue-proxy's series and labels, nothing retired."""
    from prometheus_client.parser import text_string_to_metric_families

    from gourmetgram_app.local.gateway import Gateway, Revision
    from gourmetgram_app.local.manifests import load_manifest

    gateway = Gateway(load_manifest(REPO_ROOT / "inference_services" / "staging.yaml"),
                      [Revision("food11-staging-predictor-00001", "http://127.0.0.1:9")], logger_enabled=False)
    gateway.observe(gateway.revisions[0], 503, 0.0)
    families = {f.name: f for f in text_string_to_metric_families(gateway.metrics_text())}
    family = families[metric_names.REQUEST_DURATION]
    assert family.type == "histogram"
    count = next(s for s in family.samples if s.name == metric_names.REQUEST_COUNT)
    assert count.value == 1 and set(count.labels) == set(metric_names.LABELS)
    assert count.labels[metric_names.STATUS_CODE] == "503"
    assert count.labels[metric_names.REVISION] == "food11-staging-predictor-00001"
    buckets = sorted({float(s.labels["le"]) for s in family.samples if s.name == metric_names.REQUEST_DURATION_BUCKET})
    assert buckets[:-1] == [float(b) for b in metric_names.LATENCY_BUCKETS_S]
    assert not any(r in gateway.metrics_text() for r in metric_names.RETIRED)
