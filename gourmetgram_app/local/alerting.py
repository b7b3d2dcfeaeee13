"""The local stack's alerting: Debian's Alertmanager routing the chart's alerts to the retrain receiver.

On the cluster, Prometheus evaluates ``charts/gourmetgram/rules/gourmetgram.rules.yml`` and
kube-prometheus-stack's Alertmanager routes the retrain alerts to the receiver by the chart's
``AlertmanagerConfig`` (``monitoring.retrainReceiver``). Locally the same happens with the same
sources: the local Prometheus loads the same rules file and sends to a local
``prometheus-alertmanager``, whose routing is the chart's ``AlertmanagerConfig`` RENDERED from the
chart (the values decide: alert names, group and repeat timings) and translated the way
prometheus-operator translates it (the route becomes a sub-route of a root route whose default
receiver drops everything else; the webhook's bearer token comes from a file instead of a
Secret). The receiver (``gourmetgram loop receiver``) and Alertmanager are two more supervised
processes of the stack (:class:`LocalAlerting`).

What is not the operator's: the namespace matcher it adds to a namespaced route (local alerts
carry no ``namespace``), and any receiver kind other than webhooks (refused, never dropped).

Rules whose ``for:`` is too long for a test get a generated variant (:func:`shortened_rules`):
the same file with every ``for:`` capped, never a second hand-written copy.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from gourmetgram import constants, control
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.retrain.settings import duration_s
from gourmetgram_app.local.process import Service, answers, child_env, get_ok

ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"
AMTOOL_BIN = "/usr/bin/amtool"
RECEIVER, ALERTMANAGER = "retrain-receiver", "alertmanager"
NULL_RECEIVER = "null"  # the root route's default: alerts no route claims go nowhere
TOKEN_FILE = "retrain-receiver-token"
# Chart values of the route's timings (monitoring.retrainReceiver), in Alertmanager's names.
TIMINGS = {"groupWait": "group_wait", "groupInterval": "group_interval", "repeatInterval": "repeat_interval"}
MATCH_TYPES = ("=", "!=", "=~", "!~")


def render_route(receiver_url: str, timings: dict[str, str] | None = None) -> dict[str, Any]:
    """The chart's ``AlertmanagerConfig`` for the production release, with the route on and
    pointed at ``receiver_url``; ``timings`` overrides ``groupWait``/``groupInterval``/
    ``repeatInterval`` (the demo shortens them)."""
    from gourmetgram import manifests

    unknown = set(timings or {}) - set(TIMINGS)
    if unknown:
        raise BadInput(f"unknown Alertmanager timing(s) {sorted(unknown)}; use {', '.join(TIMINGS)}")
    values = {"enabled": True, "url": receiver_url, **(timings or {})}
    objects = manifests.render_objects(constants.PRODUCTION, {"monitoring": {"retrainReceiver": values}})
    found = [o for o in objects if o.get("kind") == "AlertmanagerConfig"]
    if len(found) != 1:
        raise BadInput(f"the chart rendered {len(found)} AlertmanagerConfig objects with "
                        "monitoring.retrainReceiver.enabled; expected one")
    return found[0]


def _matcher(m: dict[str, Any]) -> str:
    kind = m.get("matchType", "=")
    if kind not in MATCH_TYPES:
        raise BadInput(f"AlertmanagerConfig matcher {m!r}: matchType must be one of {', '.join(MATCH_TYPES)}")
    return f"{m['name']}{kind}{json.dumps(str(m['value']))}"


def alertmanager_config(amc: dict[str, Any], token_file: Path | None = None) -> dict[str, Any]:
    """Alertmanager's own configuration for one ``AlertmanagerConfig`` (monitoring.coreos.com/
    v1alpha1): its route under a root route, its webhook receivers, the bearer token from
    ``token_file``. Anything this translation does not carry over is refused with its name."""
    spec = amc.get("spec") or {}
    route = dict(spec.get("route") or {})
    carried = {"receiver", "groupBy", "matchers", *TIMINGS}
    extra = sorted(set(route) - carried)
    if extra:
        raise BadInput(f"AlertmanagerConfig route fields not carried to the local Alertmanager: {extra}")
    sub: dict[str, Any] = {"receiver": route["receiver"], "group_by": list(route.get("groupBy") or [])}
    for chart_name, am_name in TIMINGS.items():
        if route.get(chart_name):
            sub[am_name] = str(route[chart_name])
    sub["matchers"] = [_matcher(m) for m in route.get("matchers") or []]
    receivers: list[dict[str, Any]] = [{"name": NULL_RECEIVER}]
    for r in spec.get("receivers") or []:
        kinds = sorted(set(r) - {"name", "webhookConfigs"})
        if kinds:
            raise BadInput(f"receiver {r.get('name')!r}: only webhookConfigs are carried locally, not {kinds}")
        hooks = []
        for w in r.get("webhookConfigs") or []:
            hook: dict[str, Any] = {"url": w["url"], "send_resolved": bool(w.get("sendResolved", True))}
            auth = (w.get("httpConfig") or {}).get("authorization")
            if auth:
                if token_file is None:
                    raise BadInput(f"receiver {r['name']!r} sends a bearer token: pass the token file")
                hook["http_config"] = {"authorization": {"type": auth.get("type", "Bearer"),
                                                         "credentials_file": str(token_file)}}
            hooks.append(hook)
        receivers.append({"name": r["name"], "webhook_configs": hooks})
    return {"route": {"receiver": NULL_RECEIVER, "routes": [sub]}, "receivers": receivers}


def shortened_rules(source: Path, target: Path, longest_for: str) -> Path:
    """A copy of the rules file ``source`` at ``target`` with every ``for:`` capped at
    ``longest_for`` (``0s``: an alert fires at its first true evaluation). Nothing else changes."""
    cap = duration_s(longest_for)
    doc = yaml.safe_load(Path(source).read_text())
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            if "for" in rule and duration_s(_duration(rule["for"])) > cap:
                rule["for"] = longest_for
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(yaml.safe_dump(doc, sort_keys=False, width=200))
    return Path(target)


def _duration(value: str) -> str:
    """Prometheus durations as the retrain config parses them (``0m`` and ``15m`` alike)."""
    text = str(value).strip()
    return text if text[-1:] in "smhd" else f"{text}s"


class LocalAlerting:
    """The retrain receiver and Alertmanager as services of a local stack.

    ``gateway_url``/``prometheus_url``: the production stack a triggered run stages and canaries
    its new version on (the receiver hands them to the run). ``timings``: chart value overrides
    of the route's timings. The receiver's bearer token is a fresh random file (0600) per start,
    read by both."""

    def __init__(self, state_dir: str | Path, log_dir: str | Path, gateway_url: str,
                 prometheus_url: str | None = None, host: str = constants.HOST,
                 receiver_port: int | None = None, alertmanager_port: int | None = None,
                 db_url: str | None = None, retrain_config: str = "retrain",
                 retrain_state_dir: str | Path | None = None, timings: dict[str, str] | None = None,
                 binary: str = ALERTMANAGER_BIN) -> None:
        from gourmetgram.rollout.prometheus import free_port

        if not Path(binary).is_file():
            raise DependencyUnavailable(f"{binary} not found; install Debian's `prometheus-alertmanager` "
                                        "package (scripts/setup.sh does)")
        self.state_dir, self.log_dir, self.host = Path(state_dir), Path(log_dir), host
        self.receiver_port = receiver_port or free_port(host)
        self.alertmanager_port = alertmanager_port or free_port(host)
        self.token_file = self.state_dir / TOKEN_FILE
        self.config_file = self.state_dir / "alertmanager.yml"
        self.timings = dict(timings or {})
        self.binary = binary
        receiver_argv = [sys.executable, "-m", "gourmetgram_app.local.retrain_cli", "receiver",
                         "--host", host, "--port", str(self.receiver_port), "--token-file", str(self.token_file),
                         "--retrain-config", retrain_config, "--gateway", gateway_url]
        if prometheus_url:
            receiver_argv += ["--prometheus", prometheus_url]
        if db_url:
            receiver_argv += ["--db", db_url]
        if retrain_state_dir:
            receiver_argv += ["--state-dir", str(retrain_state_dir)]
        self.receiver = Service(RECEIVER, receiver_argv, self.log_dir / "retrain-receiver.log",
                                lambda: get_ok(f"{self.receiver_url}/healthz"), env=child_env(),
                                live=answers(f"{self.receiver_url}/healthz"))
        self.alertmanager = Service(
            ALERTMANAGER,
            [binary, f"--config.file={self.config_file}", f"--storage.path={self.state_dir / 'alertmanager-data'}",
             f"--web.listen-address={host}:{self.alertmanager_port}",
             "--cluster.listen-address=",  # no gossip port: one Alertmanager, and stacks run side by side
             "--log.level=info"],
            self.log_dir / "alertmanager.log", lambda: get_ok(f"{self.alertmanager_url}/-/ready"),
            live=answers(f"{self.alertmanager_url}/-/healthy"))

    @property
    def receiver_url(self) -> str:
        return f"http://{self.host}:{self.receiver_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{self.host}:{self.alertmanager_port}"

    def prepare(self) -> None:
        """Write the token and Alertmanager's config (before the services start)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        control.write_token(self.token_file)
        amc = render_route(f"{self.receiver_url}/alerts", self.timings)
        self.config_file.write_text(yaml.safe_dump(alertmanager_config(amc, self.token_file), sort_keys=False))

    def services(self) -> list[Service]:
        """In start order: the receiver first (Alertmanager's webhook target)."""
        return [self.receiver, self.alertmanager]

    def route(self) -> dict[str, Any]:
        """The route in the written config (what the demo prints)."""
        return copy.deepcopy(yaml.safe_load(self.config_file.read_text())["route"]["routes"][0])
