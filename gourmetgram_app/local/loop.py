"""The closing-the-loop services next to a local stack: the broker (the logger's fan-out) and
the capture sink (+ feedback API), as supervised child processes.

    with LoopServices(bundle, log_dir, detector_url=...) as loop:
        LocalStack(bundle, "production", logger_url=loop.broker_url, feedback_url=loop.capture_url)

The gateway's logger posts to the broker; the broker's triggers deliver to the capture sink
(every event) and to the drift detector (when given), each with retries, so the detector and
the capture sink fail independently and neither can reach a prediction. The broker keeps what
it accepted in ``broker.db`` in the log folder until it is delivered (it survives a kill -9).

:func:`closed_loop` builds the whole stack ``gourmetgram serve --loop`` runs: the serving stack,
these two services and the alerting that closes the loop (the retrain receiver and Alertmanager,
:mod:`gourmetgram_app.local.alerting`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gourmetgram import constants
from gourmetgram.rollout.prometheus import free_port
from gourmetgram_app.local.ports import Ports
from gourmetgram_app.local.process import Service, answers, child_env, get_ok

if TYPE_CHECKING:
    from gourmetgram_app.local.alerting import LocalAlerting
    from gourmetgram_app.local.stack import LocalStack

START_TIMEOUT_S = 120.0


def _detector_auth(url: str) -> str:
    """The trigger option that makes the broker send the local detector's ingest token (what the
    gateway's logger sends when it posts to the detector itself); none for a remote detector."""
    from gourmetgram import control

    if control.sink_token_for(url) is None:
        return ""
    _token, path = control.detector_token()
    return f",token-file={path}" if path else f",token-env={control.DETECTOR_TOKEN_ENV}"


class LoopServices:
    def __init__(self, bundle: str | Path, log_dir: str | Path, detector_url: str | None = None,
                 db_url: str | None = None, objects_url: str | None = None, config: str = "loop",
                 host: str = constants.HOST, capture_port: int | None = None, broker_port: int | None = None,
                 broker_retry: int = 10) -> None:
        self.bundle, self.log_dir, self.host = Path(bundle), Path(log_dir), host
        self.capture_port = capture_port or free_port(host)
        self.broker_port = broker_port or free_port(host)
        # what the broker accepted and has not delivered yet; one per log folder (per stack)
        self.broker_store = self.log_dir / "broker.db"
        env = child_env()
        # the capture sink's package lives in capture/ (installed as capture_sink by setup.cfg)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(constants.REPO_ROOT / "capture"),
                                                           env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "capture_sink", "--bundle", str(self.bundle), "--host", host,
                "--port", str(self.capture_port), "--config", config]
        if db_url:
            argv += ["--db", db_url]
        if objects_url:
            argv += ["--objects", objects_url]
        self._capture_args = (argv, env)
        self.capture = self._capture_service()
        triggers = ["--trigger", f"capture={self.capture_url}/"]
        if detector_url:
            triggers += ["--trigger", f"detector={detector_url.rstrip('/')}/{_detector_auth(detector_url)}"]
        self.broker = Service(
            "broker", [sys.executable, "-m", "gourmetgram_app.local.broker", "--host", host,
                       "--port", str(self.broker_port), "--retry", str(broker_retry),
                       "--store", str(self.broker_store), *triggers],
            self.log_dir / "broker.log", lambda: get_ok(f"{self.broker_url}/healthz"), env=child_env(),
            live=answers(f"{self.broker_url}/healthz"))

    def _capture_service(self) -> Service:
        argv, env = self._capture_args
        return Service("capture-sink", argv, self.log_dir / "capture.log",
                       lambda: get_ok(f"{self.capture_url}/health"), env=env,
                       live=answers(f"{self.capture_url}/health"))

    @property
    def capture_url(self) -> str:
        return f"http://{self.host}:{self.capture_port}"

    @property
    def summary_url(self) -> str:
        """The capture sink's read-only loop summary (the web app's operator page reads it)."""
        return self.capture_url + constants.LOOP_SUMMARY_PATH

    @property
    def broker_url(self) -> str:
        return f"http://{self.host}:{self.broker_port}"

    def start(self) -> "LoopServices":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for service in (self.capture, self.broker):
                service.start(cwd=self.log_dir)
            for service in (self.capture, self.broker):
                service.wait_ready(START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def kill_capture(self) -> None:
        """SIGKILL the capture sink (fault tests): no chance to flush or answer anything."""
        proc = self.capture.proc
        assert proc is not None, "the capture sink was not started"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def restart_capture(self) -> None:
        self.capture = self._capture_service()
        self.capture.start(cwd=self.log_dir)
        self.capture.wait_ready(START_TIMEOUT_S)

    def stop(self) -> None:
        for service in (self.broker, self.capture):
            service.stop()

    def __enter__(self) -> "LoopServices":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def metric_total(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric family ``name`` at ``url`` (a /metrics page) whose
    labels include ``labels``."""
    text = httpx.get(url, timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == name
               for sample in family.samples if sample.name in (name, f"{name}_total")
               and all(sample.labels.get(k) == v for k, v in labels.items()))


@dataclasses.dataclass(frozen=True)
class Accounting:
    """Served predictions against captured samples, and what the hops between dropped."""

    served: int
    captured: int
    lost: tuple[str, ...]  # served (200 with this inference id) and never captured whole
    logger_dropped: float
    broker_dropped: float

    @property
    def ok(self) -> bool:
        return not self.lost and self.logger_dropped == 0 and self.broker_dropped == 0

    def line(self) -> str:
        return (f"served {self.served}, captured {self.captured}, events lost {len(self.lost)}; "
                f"dropped by the logger {self.logger_dropped:.0f}, by the broker {self.broker_dropped:.0f}")


def captured_ids(db_url: str) -> set[str]:
    """Inference ids whose sample has both halves: the image (request) and the label (response)."""
    from sqlalchemy import select

    from gourmetgram.loop.models import Sample
    from gourmetgram.loop.store import Store

    store = Store(db_url)
    try:
        with store.session() as s:
            return set(s.scalars(select(Sample.inference_id).where(
                Sample.label.is_not(None), Sample.object_key.is_not(None))))
    finally:
        store.dispose()


def wait_delivered(gateway_url: str, broker_url: str, timeout_s: float = 180.0) -> bool:
    """Wait until nothing is in flight between the gateway and the consumers: the logger's queue
    and every broker trigger empty (the capture sink answers only once it committed). The
    logger is read first: once it is empty, what is left is all owed by the broker."""
    def in_flight() -> float:
        return (metric_total(f"{gateway_url}/metrics", "logger_events_queued")
                + metric_total(f"{broker_url}/metrics", "broker_queue"))

    deadline = time.monotonic() + timeout_s
    while in_flight() > 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def account(served_ids: Iterable[str], db_url: str, gateway_url: str, broker_url: str,
            timeout_s: float = 180.0) -> Accounting:
    """Once nothing is in flight (:func:`wait_delivered`), compare what was served with what was
    captured, and collect what the logger and the broker dropped."""
    wait_delivered(gateway_url, broker_url, timeout_s)
    served = set(served_ids)
    captured = captured_ids(db_url)
    return Accounting(len(served), len(captured & served), tuple(sorted(served - captured)),
                      metric_total(f"{gateway_url}/metrics", "logger_events_dropped"),
                      metric_total(f"{broker_url}/metrics", "broker_deliveries", outcome="dropped"))


@dataclasses.dataclass
class ClosedLoop:
    """A stack with the loop around it, as ``gourmetgram serve --loop`` runs it (and the demo):
    the broker and the capture sink, and (with Prometheus) the retrain receiver and Alertmanager,
    all supervised with the stack's own processes."""

    stack: LocalStack
    loop: LoopServices
    alerting: LocalAlerting | None
    notes: list[str]

    def endpoints(self) -> dict[str, str]:
        out = {**self.stack.endpoints(), "broker (logger fan-out)": self.loop.broker_url,
               "capture sink": self.loop.capture_url, "loop summary": self.loop.summary_url}
        if self.alerting is not None:
            out.update({"alertmanager": self.alerting.alertmanager_url,
                        "retrain receiver": f"{self.alerting.receiver_url}/status"})
        return out


def closed_loop(bundle: Path, stage: str, ports: Ports, *, host: str = constants.HOST,
                model_version: str | int | None = None, log_dir: Path | None = None, fixed_ports: bool = True,
                detector: bool = True, prometheus: bool = True, webapp: bool = True,
                manifest: str | Path | None = None, on_event=None, alert_timings: dict[str, str] | None = None,
                retrain_config: str = "retrain", retrain_state_dir: Path | None = None) -> ClosedLoop:
    """Build (not start) the stack with the loop. ``fixed_ports``: the loop's services on their
    default ports (capture 8071, broker 8060, receiver 8073, Alertmanager 9093), else free ones.
    Without Prometheus, or without Debian's Alertmanager, nothing would evaluate or route the
    alerts: the receiver and Alertmanager are left out and ``notes`` says why."""
    from gourmetgram.tracking import home
    from gourmetgram_app.local.alerting import ALERTMANAGER_BIN, LocalAlerting
    from gourmetgram_app.local.stack import LocalStack
    from gourmetgram_app.local.supervisor import SIDE

    log_dir = Path(log_dir) if log_dir else home() / "logs" / f"serve-{stage}"
    loop = LoopServices(bundle, log_dir, host=host, detector_url=f"http://{host}:{ports.detector}/" if detector else None,
                        capture_port=constants.CAPTURE_PORT if fixed_ports else None,
                        broker_port=constants.BROKER_PORT if fixed_ports else None)
    extra = [(loop.capture, SIDE), (loop.broker, SIDE)]
    notes: list[str] = []
    alerting = None
    gateway_url, prometheus_url = f"http://{host}:{ports.gateway}", f"http://{host}:{ports.prometheus}"
    if not prometheus:
        notes.append("no Prometheus: no alert is evaluated, so no retrain receiver or Alertmanager either")
    elif not Path(ALERTMANAGER_BIN).is_file():
        notes.append(f"{ALERTMANAGER_BIN} not found (apt-get install prometheus-alertmanager): alerts are "
                     "evaluated but go nowhere; no retrain receiver")
    else:
        from gourmetgram import control

        alerting = LocalAlerting(
            control.stack_state_dir(host, ports.gateway), log_dir, gateway_url, prometheus_url, host=host,
            receiver_port=constants.RETRAIN_RECEIVER_PORT if fixed_ports else None,
            alertmanager_port=constants.ALERTMANAGER_PORT if fixed_ports else None,
            retrain_config=retrain_config, retrain_state_dir=retrain_state_dir, timings=alert_timings)
        extra += [(service, SIDE) for service in alerting.services()]
    stack = LocalStack(bundle=bundle, stage=stage, ports=ports, host=host, manifest=manifest, webapp=webapp,
                       detector=detector, prometheus=prometheus, on_event=on_event, log_dir=log_dir,
                       logger_url=loop.broker_url + "/", feedback_url=loop.capture_url,
                       feedback_summary_url=loop.summary_url, model_version=model_version,
                       extra_services=extra,
                       alertmanager_url=alerting.alertmanager_url if alerting else None,
                       scrape_targets={"retrain-receiver": alerting.receiver_url} if alerting else None,
                       retrain_url=alerting.receiver_url if alerting else None)
    if alerting is not None:
        alerting.prepare()
    return ClosedLoop(stack, loop, alerting, notes)
