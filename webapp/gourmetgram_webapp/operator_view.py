"""What the operator page shows, gathered from the sources a person would otherwise query.

Each panel is independent: a source that is down, slow or not configured becomes a panel
that says "not available" and why, never an error page. Nothing here changes anything:
the page is read-only (GETs to the gateway's rollout status, the detector's ``/status``,
the Kubernetes API's InferenceService, the MLflow registry, the feedback summary, Prometheus's
query API for the label-free accuracy estimates, the capture sink's thumbnails, the retrain
receiver's runs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Awaitable, Callable

import httpx

from gourmetgram import constants
from gourmetgram.errors import BadInput
from gourmetgram_webapp.config import StageSource, WebConfig, capture_base_url

ROLLOUT_STATUS_PATH = "/_gourmetgram/rollout"
REGISTRY_CACHE_S = 10.0


@dataclasses.dataclass
class Panel:
    """One box of the page: its data, or the reason it has none."""

    data: Any = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.data is not None

    def to_dict(self) -> dict:
        return {"available": self.ok, "data": self.data, "reason": self.reason}


def unavailable(reason: str) -> Panel:
    return Panel(None, reason)


async def _guard(what: str, timeout_s: float, call: Callable[[], Awaitable[Any]]) -> Panel:
    """Run one source; any failure is the panel's reason, said plainly."""
    try:
        return Panel(await asyncio.wait_for(call(), timeout_s))
    except asyncio.TimeoutError:
        return unavailable(f"{what} did not answer within {timeout_s:.0f} s")
    except BadInput as exc:
        return unavailable(str(exc))
    except httpx.HTTPError as exc:
        return unavailable(f"{what} cannot be reached ({type(exc).__name__})")
    except Exception as exc:  # noqa: BLE001 - a broken source must not break the page
        return unavailable(f"{what} failed: {type(exc).__name__}: {exc}")


# -- served: revisions and canary percentage -----------------------------------------------

def served_from_local_status(status: dict) -> dict:
    """The local gateway's rollout status, as the page shows it."""
    from gourmetgram.rollout.local import state_from_status

    state = state_from_status(status)
    return {
        "inferenceservice": state.inferenceservice, "namespace": state.namespace,
        "stable": state.stable, "canary": state.canary, "canary_percent": state.canary_percent,
        "revisions": [{"name": r.get("name"), "percent": r.get("percent"), "tag": r.get("tag"),
                       "version": r.get("version")} for r in state.revisions],
    }


def served_from_isvc(isvc: dict) -> dict:
    """An InferenceService from the Kubernetes API, as the page shows it."""
    from gourmetgram.rollout.kube import VERSION_ANNOTATION, state_from_isvc

    state = state_from_isvc(isvc)
    annotations = (isvc.get("spec", {}).get("transformer", {}).get("annotations") or {})
    return {
        "inferenceservice": state.inferenceservice, "namespace": state.namespace,
        "stable": state.stable, "canary": state.canary, "canary_percent": state.canary_percent,
        "revisions": [{"name": r.get("name"), "percent": r.get("percent"), "tag": r.get("tag"),
                       "version": annotations.get(VERSION_ANNOTATION) if r.get("tag") == "latest" else None}
                      for r in state.revisions],
    }


async def _served(source: StageSource, client: httpx.AsyncClient) -> dict:
    if source.served_kind == "local":
        url = source.served_target.rstrip("/") + ROLLOUT_STATUS_PATH
        r = await client.get(url)
        if r.status_code != 200:
            raise BadInput(f"the gateway's rollout status answered {r.status_code}")
        return served_from_local_status(r.json())

    def read_isvc() -> dict:
        from gourmetgram.rollout.kube import KubeRollout

        namespace, _, name = source.served_target.partition("/")
        return KubeRollout(name, namespace).get()

    return served_from_isvc(await asyncio.to_thread(read_isvc))


# -- drift ------------------------------------------------------------------------------

async def _drift(source: StageSource, client: httpx.AsyncClient) -> dict:
    r = await client.get(source.detector + "/status")
    if r.status_code != 200:
        raise BadInput(f"the drift detector's /status answered {r.status_code}")
    s = r.json()
    label = s.get("label_drift") or {}
    return {
        "is_drift": bool(s.get("is_drift")), "test_stat": s.get("test_stat"), "threshold": s.get("threshold"),
        "processed": s.get("processed"), "backlog": s.get("backlog"), "drift_flags": s.get("drift_flags"),
        "label_drift_statistic": label.get("statistic"), "label_window": label.get("window"),
        **what_changed(s.get("profile")),
    }


def what_changed(profile: Any) -> dict:
    """The detector's image-property profile (drift_detector.profile): what moved, and the most
    atypical recent photos (their sample ids: the thumbnails come from the capture sink)."""
    if not isinstance(profile, dict) or not profile.get("window"):
        return {"profile_window": 0, "moved_properties": [], "moved_classes": [], "atypical": []}
    moved = profile.get("moved") or {}
    atypical = []
    for a in profile.get("atypical") or []:
        try:
            shift = float(a["shift_sd"])
            atypical.append({"sample_id": str(a["sample_id"]), "predicted": a.get("predicted"),
                             "why": f"{str(a['property']).replace('_', ' ')} {'up' if shift > 0 else 'down'} "
                                    f"{abs(shift):.1f} sd"})
        except (KeyError, TypeError, ValueError):
            continue
    return {"profile_window": int(profile.get("window") or 0),
            "moved_properties": [str(m) for m in moved.get("properties") or []],
            "moved_classes": [str(m) for m in moved.get("classes") or []], "atypical": atypical}


# -- registry ---------------------------------------------------------------------------

class RegistryReader:
    """The MLflow registry's versions and aliases, cached briefly (MLflow calls are slow)."""

    def __init__(self, cache_s: float = REGISTRY_CACHE_S) -> None:
        self.cache_s = cache_s
        self._at = 0.0
        self._value: list[dict] | None = None
        self._lock = asyncio.Lock()

    async def versions(self) -> list[dict]:
        async with self._lock:
            if self._value is None or time.monotonic() - self._at > self.cache_s:
                self._value = await asyncio.to_thread(self._read)
                self._at = time.monotonic()
            return self._value

    @staticmethod
    def _read() -> list[dict]:
        from gourmetgram import registry

        return [{"version": v.version, "aliases": list(v.aliases),
                 "accuracy": v.tags.get(registry.TAG_ACCURACY),
                 "passed": v.tags.get(registry.TAG_EVALUATION_PASSED),
                 "commit": (v.tags.get(registry.TAG_GIT_COMMIT) or "")[:10]}
                for v in registry.list_versions()]


# -- feedback (the loop's store) -----------------------------------------------------------

def feedback_summary(summary: dict) -> dict:
    """The capture sink's ``GET /summary`` (:func:`gourmetgram.loop.quality.summary`) as the page
    shows it: accuracy by model version (from feedback, from labels) and the labelling backlog."""
    try:
        rows = []
        for row in summary["accuracy_by_version"]:
            fb, labels = row.get("feedback") or {}, row.get("labels") or {}
            random = row.get("labels_random") or {}
            kinds = row.get("kinds") or {}
            ece = row.get("ece") or {}
            ece_source = "labels_random" if "labels_random" in ece else "labels"
            rows.append({"version": str(row["model_version"]), "feedback": int(fb.get("n", 0)),
                         "accuracy": fb.get("value"), "labelled": int(labels.get("n", 0)),
                         "label_accuracy": labels.get("value"),
                         "random_labelled": int(random.get("n", 0)), "random_accuracy": random.get("value"),
                         "ece": (ece.get(ece_source) or {}).get("value"), "ece_n": int((ece.get(ece_source) or {})
                                                                                      .get("n", 0)),
                         "ece_source": "random share" if ece_source == "labels_random" else "all labels",
                         "kinds": ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in sorted(kinds.items()))})
        b = summary["backlog"]
        backlog = {"total": int(b["total"]), "to_queue": int(b["to_queue"]), "queued": int(b["queued"]),
                   "in_label_studio": int(b.get("in_label_studio", 0)),
                   "by_reason": ", ".join(f"{r.replace('_', ' ')} {n}"
                                          for r, n in (b.get("to_queue_by_reason") or {}).items() if n)}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInput(f"the feedback store's summary is not in the expected form ({type(exc).__name__}: "
                        f"{exc})") from None
    return {"accuracy_by_version": rows, "backlog": backlog,
            "with_feedback": summary.get("with_feedback"), "captured": summary.get("captured")}


async def _feedback(url: str, client: httpx.AsyncClient) -> dict:
    r = await client.get(url)
    if r.status_code != 200:
        detail = ""
        try:
            body = r.json()
            detail = str(body.get("error") or "") if isinstance(body, dict) else ""
        except ValueError:
            pass
        raise BadInput(f"the feedback store answered {r.status_code}" + (f": {detail[:200]}" if detail else ""))
    try:
        body = r.json()
    except ValueError:
        raise BadInput("the feedback store's summary is not JSON") from None
    if not isinstance(body, dict):
        raise BadInput("the feedback store's summary is not in the expected form")
    return feedback_summary(body)


# -- accuracy without labels (the transformers' estimates, through Prometheus) ----------------

ESTIMATE = "gourmetgram_estimated_accuracy"
ESTIMATE_QUERY = '{__name__=~"gourmetgram_estimated_accuracy(_lower|_upper|_samples)?"}'
# the methods the page shows, the one the alert reads first (gourmetgram.estimation.PRIMARY_METHOD)
ESTIMATE_METHODS = ("atc_prior", "atc", "confidence")


def estimates_from_prometheus(result: list[dict]) -> list[dict]:
    """An instant query's result -> one row per (model version, stage, revision): per method the
    replicas' estimates weighted by their windows, the widest interval, the predictions behind."""
    series: dict[tuple[str, str, str], dict[str, dict[str, dict[str, float]]]] = {}
    for item in result:
        labels, value = item["metric"], float(item["value"][1])
        key = (labels.get("model_version", ""), labels.get("stage", ""), labels.get("revision", ""))
        replica = labels.get("pod") or labels.get("instance") or ""
        method = labels.get("method", "")
        series.setdefault(key, {}).setdefault(method, {}).setdefault(replica, {})[labels["__name__"]] = value
    rows = []
    for (version, stage, revision), methods in sorted(series.items()):
        row: dict = {"version": version, "stage": stage, "revision": revision, "n": 0, "methods": {}}
        for method, replicas in methods.items():
            n = sum(r.get(ESTIMATE + "_samples", 0.0) for r in replicas.values())
            if n <= 0:
                continue
            value = sum(r.get(ESTIMATE, 0.0) * r.get(ESTIMATE + "_samples", 0.0) for r in replicas.values()) / n
            row["methods"][method] = {
                "value": value, "n": int(n),
                "lower": min(r.get(ESTIMATE + "_lower", value) for r in replicas.values()),
                "upper": max(r.get(ESTIMATE + "_upper", value) for r in replicas.values())}
            row["n"] = max(row["n"], int(n))
        if row["methods"]:
            rows.append(row)
    return rows


async def _estimates(url: str, client: httpx.AsyncClient) -> list[dict]:
    r = await client.get(f"{url}/api/v1/query", params={"query": ESTIMATE_QUERY})
    try:
        body = r.json()
    except ValueError:
        body = {}
    if r.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
        raise BadInput(f"Prometheus answered {r.status_code}" + (f": {body.get('error')}" if isinstance(body, dict)
                                                                   and body.get("error") else ""))
    try:
        return estimates_from_prometheus(body["data"]["result"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BadInput(f"Prometheus's answer is not an instant vector ({type(exc).__name__})") from None
# -- retraining (the retrain receiver's run history) ---------------------------------------

def retrain_runs(body: dict) -> list[dict]:
    """The receiver's ``GET /runs`` as the page shows it: per run, when and what started it (the
    trigger), its steps and how it ended ("running" until then)."""
    try:
        out = []
        for run in body["runs"]:
            end = run.get("finished") or {}
            steps = [{"at": str(st.get("at", ""))[11:19], "step": str(st.get("step", "")),
                      "detail": _step_detail(st)} for st in run.get("steps") or []]
            out.append({"run_id": str(run["run_id"]), "started_at": str(run.get("started_at", "")),
                        "trigger": str(run.get("source", "")), "reasons": ", ".join(run.get("reasons") or []),
                        "outcome": str(end.get("status") or "running"), "version": end.get("version"),
                        "error": end.get("error") or "", "steps": steps})
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"the retrain receiver's runs are not in the expected form ({type(exc).__name__}: {exc})") from None
    return out


def _step_detail(step: dict) -> str:
    """A step's figures in a few words (the page's table; the CLI's ``loop status`` says more)."""
    name = step.get("step")
    if name == "gate":
        sets = ", ".join(f"{k} {_three(v.get('v1'))} -> {_three(v.get('v2'))}"
                         for k, v in (step.get("sets") or {}).items())
        return ("passed" if step.get("passed") else "rejected") + (f" ({sets})" if sets else "")
    if name == "staging":
        return "passed" if step.get("passed") else "blocked: " + "; ".join(step.get("reasons") or [])
    if name == "canary":
        return f"{step.get('percent')}%"
    if name == "register":
        return f"version {step.get('version')}"
    if name == "decision":
        return f"{step.get('outcome')}: {step.get('detail', '')}"
    if name == "export":
        return ", ".join(f"{k} {v}" for k, v in sorted((step.get("labels") or {}).items())) or "no labels"
    return str(step.get("status", ""))


def _three(value) -> str:
    return "-" if value is None else f"{float(value):.3f}"


async def _retrain(url: str, client: httpx.AsyncClient) -> list[dict]:
    r = await client.get(f"{url}/runs", params={"limit": 5})
    if r.status_code != 200:
        raise BadInput(f"the retrain receiver answered {r.status_code}")
    try:
        body = r.json()
    except ValueError:
        raise BadInput("the retrain receiver's runs are not JSON") from None
    return retrain_runs(body if isinstance(body, dict) else {})


# -- the page -----------------------------------------------------------------------------

async def gather(config: WebConfig, client: httpx.AsyncClient, registry: RegistryReader | None) -> dict:
    """Every panel of the operator page, fetched concurrently; never raises."""
    t = config.status_timeout_s

    async def stage_view(source: StageSource) -> dict:
        served = (_guard("the serving status", t, lambda: _served(source, client)) if source.served
                  else _none("no serving status source is configured for this stage"))
        drift = (_guard("the drift detector", t, lambda: _drift(source, client)) if source.detector
                 else _none("no drift detector is configured for this stage"))
        s, d = await asyncio.gather(served, drift)
        return {"stage": source.stage, "served": s.to_dict(), "drift": d.to_dict()}

    registry_panel = (_guard("the model registry", max(t, 15.0), registry.versions) if registry
                      else _none("the model registry is not configured"))
    summary_url = config.feedback_summary_url
    feedback_panel = (_guard(f"the feedback store at {summary_url}", t, lambda: _feedback(summary_url, client))
                      if summary_url
                      else _none("the feedback store (production accuracy, labelling backlog) is not "
                                 "configured for this page (locally: `gourmetgram serve --loop`)"))
    estimates_panel = (_guard(f"Prometheus at {config.prometheus_url}", t,
                              lambda: _estimates(config.prometheus_url, client))
                       if config.prometheus_url
                       else _none("Prometheus is not configured for this page (the label-free accuracy "
                                  "estimates come from the transformers' metrics; locally `gourmetgram serve` "
                                  "with its Prometheus)"))
    retrain_panel = (_guard(f"the retrain receiver at {config.retrain_url}", t,
                            lambda: _retrain(config.retrain_url, client))
                     if config.retrain_url
                     else _none("the retrain receiver is not configured for this page (locally: "
                                "`gourmetgram serve --loop` with Prometheus)"))
    stages, reg, feedback, estimates, retrain = await asyncio.gather(
        asyncio.gather(*(stage_view(s) for s in config.stages)), registry_panel, feedback_panel, estimates_panel,
        retrain_panel)
    stage_list = list(stages)
    if reg.ok:
        for view in stage_list:
            view["registered"] = [v["version"] for v in reg.data if view["stage"] in v["aliases"]]
            if view["stage"] == constants.PRODUCTION:  # the canary alias belongs to production's rollout
                view["registered_canary"] = [v["version"] for v in reg.data if constants.CANARY in v["aliases"]]
    return {"stages": stage_list, "registry": reg.to_dict(), "feedback": feedback.to_dict(),
            "estimates": estimates.to_dict(), "estimate_methods": list(ESTIMATE_METHODS),
            "thumbnails": bool(capture_base_url(config.feedback_summary_url)), "retrain": retrain.to_dict(),
            "model": config.model_name}


async def _none(reason: str) -> Panel:
    return unavailable(reason)
