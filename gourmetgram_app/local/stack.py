"""Start and supervise the local serving stack: Triton -> transformer -> gateway (+ detector, Prometheus).

Each service is a child process in its own process group (session), so stopping one
reaches everything it started (tritonserver and its Python-backend stubs too) and a
Ctrl-C in the terminal reaches only this supervisor, which then stops the services in
reverse order. From its first start on every service is watched by a
:class:`~gourmetgram_app.local.supervisor.Supervisor`: a start that fails is retried, one that
exits or hangs (its liveness probe stops answering) is restarted with back-off, and nothing
else is touched (a cluster's kubelet). The services are ONE list,
:meth:`LocalStack._build_services`; a new process joins the stack with one entry there.
Use it from Python as a context manager::

    with LocalStack(bundle, "staging", Ports.free()) as stack:
        httpx.post(stack.gateway_url + "/v1/models/food11:predict", json=...)

or from the shell with ``gourmetgram serve``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from gourmetgram import constants, control
from gourmetgram.bundle import Bundle
from gourmetgram.errors import BadInput
from gourmetgram.tracking import home
from gourmetgram_app.local.bundles import registered_bundle
from gourmetgram_app.local.manifests import ServiceManifest, load_manifest, load_stage_manifest, local_logger_url, revision_name
from gourmetgram_app.local.ports import Ports, check_ports_free
from gourmetgram_app.local.process import Service, answers, child_env, get_ok
from gourmetgram_app.local.supervisor import INGRESS, SERVING, SIDE, Event, RestartPolicy, Supervisor
from gourmetgram_app.local.triton_server import model_dir_of, with_libpython

TRITON, TRANSFORMER, GATEWAY, WEBAPP = "triton", "transformer", "gateway", "webapp"
DETECTOR, PROMETHEUS = "detector", "prometheus"
START_TIMEOUT_S = 180.0  # tritonserver + model load on 2 busy cores can take a minute


def _stage_of(manifest: ServiceManifest) -> str:
    """The stage an InferenceService serves (its name, constants.ISVC_NAMES), else ""."""
    return {name: stage for stage, name in constants.ISVC_NAMES.items()}.get(manifest.name, "")


class RevisionPair:
    """One revision's Triton and transformer, created, started and stopped together.

    The transformer of a revision is started with ``--predictor_host`` of ITS OWN Triton,
    so a request that enters a revision's transformer can only reach that revision's model:
    locally the two components cannot split independently (kserve#1669 on the cluster).
    """

    def __init__(self, bundle: Path, revision: str, manifest: ServiceManifest, ports: Ports,
                 host: str = constants.HOST, log_dir: Path | None = None,
                 log_suffix: str | None = None, model_version: str | None = None,
                 stage: str | None = None) -> None:
        self.bundle = Path(bundle)
        self.revision = revision
        self.manifest = manifest
        self.ports = ports
        self.host = host
        log_dir = Path(log_dir) if log_dir else home() / "logs" / "revisions"
        suffix = f"-{revision}" if log_suffix is None else log_suffix
        m, h, p = manifest.model_name, host, ports
        protocol = manifest.protocol
        predictor_port = p.triton_grpc if protocol == "grpc-v2" else p.triton_http
        env = child_env()
        self.triton = Service(
            TRITON,
            [sys.executable, "-m", "gourmetgram_app.local.triton_server", "--model-repository",
             str(Bundle(self.bundle).triton_repo), "--model", m, "--host", h, "--http-port", str(p.triton_http),
             "--grpc-port", str(p.triton_grpc), "--metrics-port", str(p.triton_metrics)],
            log_dir / f"triton{suffix}.log",
            lambda: get_ok(f"{self.triton_url}/v2/health/ready")
            and get_ok(f"{self.triton_url}/v2/models/{m}/ready"),
            env=with_libpython(env), live=answers(f"{self.triton_url}/v2/health/live"))
        self.transformer = Service(
            TRANSFORMER,
            [sys.executable, "-m", "food_transformer", "--model_name", m,
             "--predictor_host", f"{h}:{predictor_port}", "--protocol", protocol,
             "--host", h, "--http_port", str(p.transformer_http), "--grpc_port", str(p.transformer_grpc),
             "--model_spec", str(Bundle(self.bundle).spec_path), "--revision", revision,
             # the labels of the revision's label-free accuracy estimate, as the chart passes them
             "--model_version", model_version or "", "--stage", stage or _stage_of(manifest)],
            log_dir / f"transformer{suffix}.log",
            lambda: get_ok(f"{self.transformer_url}/v1/models/{m}",
                            lambda r: r.json().get("ready") is True),
            env=env, live=answers(f"{self.transformer_url}/v2/health/live"))

    @property
    def services(self) -> list[Service]:
        return [self.triton, self.transformer]

    @property
    def triton_url(self) -> str:
        return f"http://{self.host}:{self.ports.triton_http}"

    @property
    def triton_metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.triton_metrics}/metrics"

    @property
    def transformer_url(self) -> str:
        return f"http://{self.host}:{self.ports.transformer_http}"

    async def start_supervised(self, supervisor: Supervisor, cwd: Path) -> None:
        """Triton first (the transformer reads the model's metadata from it), then the
        transformer, each watched by ``supervisor`` from its first start (a failed start is
        retried with back-off); for an event loop (the gateway): the processes are spawned on
        the calling thread (PR_SET_PDEATHSIG is tied to it), only the waits run in threads.
        When the supervisor gives up on one, both are forgotten and stopped and
        :class:`DependencyUnavailable` says why."""
        import asyncio

        try:
            for service in self.services:
                component = supervisor.launch(service, cwd, SERVING, self.revision)
                await asyncio.to_thread(component.wait_ready)
        except BaseException:
            for service in self.services:
                supervisor.forget(service)
            await asyncio.to_thread(self.stop)
            raise

    def alive(self) -> bool:
        return all(s.alive() for s in self.services)

    def stop(self) -> None:
        """Transformer first (no new requests reach Triton), then Triton."""
        for service in reversed(self.services):
            service.stop()


class LocalStack:
    """Triton (PyTriton), the KServe transformer and the gateway for one stage, on localhost,
    optionally with the drift detector and Prometheus; every process supervised."""

    def __init__(self, bundle: str | Path | None = None, stage: str = constants.STAGING,
                 ports: Ports | None = None, host: str = constants.HOST,
                 manifest: str | Path | ServiceManifest | None = None,
                 log_dir: str | Path | None = None,
                 start_timeout_s: float = START_TIMEOUT_S,
                 logger_url: str | None = None, logger_timeout_s: float | None = None,
                 feedback_url: str | None = None, feedback_summary_url: str | None = None,
                 model_version: str | int | None = None,
                 webapp: bool = False, detector: bool = False, prometheus: bool = False,
                 extra_services: Sequence[tuple[Service, str]] = (),
                 alertmanager_url: str | None = None, scrape_targets: dict[str, str] | None = None,
                 retrain_url: str | None = None,
                 restart_policy: RestartPolicy | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        """``logger_url``: the inference logger's sink (the local drift detector, or the local
        broker that fans out to the detector and the capture sink); ``""`` turns the logger
        off; None keeps the manifest's (a cluster-only URL becomes the local detector port, see
        :func:`gourmetgram_app.local.manifests.local_logger_url`), or the stack's own detector when
        ``detector`` is on.
        ``logger_timeout_s``: how long the logger waits on its sink per event (the gateway's default if None).
        ``feedback_url``: where the gateway routes ``POST /v1/feedback`` (the capture sink).
        ``feedback_summary_url``: where the web app's operator page reads production accuracy and
        the labelling backlog (the capture sink's read-only ``/summary``); None: not shown.
        ``model_version``: the registered version served, carried by the logger's events into the
        captured samples.
        ``webapp``: also start the web app (a client of the gateway) on ``ports.webapp``.
        ``detector``: run the drift detector of the bundle (``<bundle>/detector/``, built by the
        pipeline) on ``ports.detector``; ``prometheus``: run Debian's Prometheus scraping the stack
        (the same config ``rollout analyze`` uses); ``extra_services``: more processes started
        (before the gateway) and supervised with the stack, with their roles (the loop's capture
        sink and broker). ``alertmanager_url``/``scrape_targets``: where the stack's Prometheus
        sends firing alerts, and what else it scrapes (``{job: base URL}``: the retrain receiver).
        ``retrain_url``: the retrain receiver, whose runs the web app's operator page shows.
        ``restart_policy``/``on_event``: how crashed processes are restarted and who hears of it."""
        self.bundle = Path(bundle).resolve() if bundle else registered_bundle(stage)
        self.stage = stage
        self.ports = ports or Ports()
        self.host = host
        if isinstance(manifest, ServiceManifest):
            self.manifest = manifest
        else:
            self.manifest = load_manifest(manifest) if manifest else load_stage_manifest(stage)
        self.model_name = self.manifest.model_name
        self.revision = revision_name(self.manifest)
        self.log_dir = Path(log_dir) if log_dir else home() / "logs" / f"serve-{stage}"
        self.start_timeout_s = start_timeout_s
        self.with_detector, self.with_prometheus = detector, prometheus
        self.extra_services = list(extra_services)
        self.alertmanager_url, self.scrape_targets = alertmanager_url, dict(scrape_targets or {})
        self.retrain_url = retrain_url
        self.logger_url = self.detector_url + "/" if detector and logger_url is None else logger_url
        self.logger_timeout_s = logger_timeout_s
        self.control_token: str | None = None  # written at start (gourmetgram.control)
        self.feedback_url = feedback_url
        self.feedback_summary_url = feedback_summary_url
        self.model_version = None if model_version is None else str(model_version)
        self.webapp = webapp
        self.services: dict[str, Service] = {}
        policy = restart_policy or RestartPolicy(start_timeout_s=start_timeout_s)
        self.supervisor = Supervisor(policy, on_event, state_file=self.log_dir / "components.json")
        self._prometheus_dir: Path | None = None
        self._check_bundle()
        # The first revision's Triton + transformer; canaries add more pairs through the gateway.
        self.pair = RevisionPair(self.bundle, self.revision, self.manifest, self.ports, self.host,
                                 self.log_dir, log_suffix="", model_version=self.model_version)

    # -- endpoints -------------------------------------------------------------------------
    @property
    def triton_url(self) -> str:
        return self.pair.triton_url

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.host}:{self.ports.triton_grpc}"

    @property
    def triton_metrics_url(self) -> str:
        return self.pair.triton_metrics_url

    @property
    def transformer_url(self) -> str:
        return self.pair.transformer_url

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.ports.gateway}"

    @property
    def webapp_url(self) -> str:
        return f"http://{self.host}:{self.ports.webapp}"

    @property
    def detector_url(self) -> str:
        """The drift detector: the stack's own when it runs one, else where this stack's
        inference logger sends events, or ""."""
        if self.with_detector:
            return f"http://{self.host}:{self.ports.detector}"
        if self.logger_url is not None:
            return self.logger_url.rstrip("/")
        return local_logger_url(self.manifest.logger.url).rstrip("/") if self.manifest.logger else ""

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.ports.prometheus}"

    def endpoints(self) -> dict[str, str]:
        m = self.model_name
        web = {"web app": f"{self.webapp_url}/", "operator page": f"{self.webapp_url}/operator"}
        out = {**(web if self.webapp else {}),
            "predict (v1)": f"{self.gateway_url}/v1/models/{m}:predict",
            "infer (v2)": f"{self.gateway_url}/v2/models/{m}/infer",
            "gateway metrics": f"{self.gateway_url}/metrics",
            **({"feedback": f"{self.gateway_url}/v1/feedback"} if self.feedback_url else {}),
            "transformer": self.transformer_url,
            "transformer metrics": f"{self.transformer_url}/metrics",
            "triton http": self.triton_url,
            "triton grpc": self.triton_grpc_url,
            "triton metrics": self.triton_metrics_url,
        }
        if self.with_detector:
            out["drift detector"] = f"{self.detector_url}/status"
        if self.with_prometheus:
            out["prometheus"] = self.prometheus_url
        return out

    # -- lifecycle -------------------------------------------------------------------------
    def _check_bundle(self) -> None:
        if not self.bundle.is_dir():
            raise BadInput(f"model bundle {self.bundle} does not exist")
        from gourmetgram.export import validate_bundle

        model_dir_of(Bundle(self.bundle).triton_repo, self.model_name)  # the most common mistake, said plainly
        validate_bundle(self.bundle, self.model_name)
        if self.with_detector and not Bundle(self.bundle).has_detector():
            raise BadInput(f"{self.bundle} has no drift detector (detector/); build it with "
                            "`gourmetgram detector build --bundle B --dataset D` or serve without it")
        if self.with_prometheus:
            from gourmetgram.rollout.prometheus import PROMETHEUS_BIN

            if not Path(PROMETHEUS_BIN).is_file():
                raise BadInput(f"{PROMETHEUS_BIN} not found; install Debian's `prometheus` package "
                                "(scripts/setup.sh does) or serve without Prometheus")

    def _build_services(self) -> list[tuple[Service, str]]:
        """Every process of the stack, in start order, with its role (what its absence means
        to clients: ``serving`` = 503s, ``side`` = nothing, ``ingress`` = the entry point).
        The supervisor restarts each the same way; a new process is one more entry here."""
        p = self.ports
        gateway_argv = [
            sys.executable, "-m", "gourmetgram_app.local.gateway", "--manifest", str(self.manifest.path),
            "--revision", f"{self.revision}={self.transformer_url}", "--host", self.host,
            "--port", str(p.gateway), "--bundle", str(self.bundle),
            "--triton-metrics", self.triton_metrics_url, "--triton-url", self.triton_url,
            "--log-dir", str(self.log_dir), "--control-token-file", str(self.control_token_path),
            "--status-file", str(self.supervisor.state_file), "--state-file", str(self.rollout_state_path)]
        if self.logger_url is not None:
            gateway_argv += ["--logger-url", self.logger_url] if self.logger_url else ["--no-logger"]
        if self.logger_timeout_s is not None:
            gateway_argv += ["--logger-timeout", str(self.logger_timeout_s)]
        if self.feedback_url:
            gateway_argv += ["--feedback-url", self.feedback_url]
        if self.model_version:
            gateway_argv += ["--model-version", self.model_version]
        gateway = Service(
            GATEWAY, gateway_argv, self.log_dir / "gateway.log",
            lambda: get_ok(f"{self.gateway_url}/v2/health/live"),
            env=child_env(), live=answers(f"{self.gateway_url}/healthz"))
        services = [(self.pair.triton, SERVING), (self.pair.transformer, SERVING)]
        if self.with_detector:  # before the gateway: its logger's sink, sending this token
            token_file = control.detector_token()[1]  # None: $GOURMETGRAM_DETECTOR_TOKEN, inherited
            services.append((Service(
                DETECTOR, [sys.executable, "-m", "drift_detector", "--bundle", str(self.bundle),
                           "--host", self.host, "--port", str(p.detector)]
                + (["--token-file", str(token_file)] if token_file else []),
                self.log_dir / "detector.log", lambda: get_ok(f"{self.detector_url}/health"),
                env=child_env(), live=answers(f"{self.detector_url}/health")), SIDE))
        services += self.extra_services  # before the gateway: its logger's/feedback's targets
        services.append((gateway, INGRESS))
        if self.webapp:  # a client of the gateway: clients never see it go
            services.append((self._webapp_service(), SIDE))
        if self.with_prometheus:  # after the gateway: it scrapes it and finds revisions through it
            services.append((self._prometheus_service(), SIDE))
        # (Label Studio: one entry here, role SIDE)
        return services

    def _prometheus_service(self) -> Service:
        from gourmetgram.rollout.prometheus import LocalPrometheus

        prom = LocalPrometheus(self.gateway_url, self.detector_url if self.with_detector else None,
                               port=self.ports.prometheus, host=self.host,
                               alertmanager_url=self.alertmanager_url, targets=self.scrape_targets)
        # Storage outlives a Prometheus restart (WAL replay) and goes when the stack stops.
        self._prometheus_dir = Path(tempfile.mkdtemp(prefix="gg-prometheus-"))
        return Service(PROMETHEUS, prom.command(self._prometheus_dir), self.log_dir / "prometheus.log",
                       lambda: get_ok(f"{self.prometheus_url}/-/ready"),
                       live=answers(f"{self.prometheus_url}/-/healthy"))

    def used_ports(self) -> set[str]:
        names = {"triton_http", "triton_grpc", "triton_metrics", "transformer_http", "transformer_grpc",
                 "gateway"}
        return names | ({"detector"} if self.with_detector else set()) | (
            {"prometheus"} if self.with_prometheus else set()) | ({"webapp"} if self.webapp else set())

    def _webapp_service(self) -> Service:
        """The web app, a plain client of the gateway's public API; its operator page reads
        this stage's rollout status from the gateway, drift from the detector and, with the
        loop, accuracy and backlog from the capture sink's summary."""
        stage = f"{self.stage}:served=local:{self.gateway_url}"
        if self.detector_url:
            stage += f",detector={self.detector_url}"
        argv = [sys.executable, "-m", "gourmetgram_webapp", "--api", self.gateway_url,
                "--model", self.model_name, "--stage", stage,
                "--model-spec", str(Bundle(self.bundle).spec_path),
                "--host", self.host, "--port", str(self.ports.webapp)]
        if self.feedback_summary_url:  # the loop's counts, from the capture sink (never its database)
            argv += ["--feedback-summary", self.feedback_summary_url]
        if self.with_prometheus:  # the transformers' label-free accuracy estimates
            argv += ["--prometheus", self.prometheus_url]
        if self.retrain_url:  # the last retrain runs: trigger, steps, outcome
            argv += ["--retrain", self.retrain_url]
        env = child_env()
        # The web app is its own deployment unit (webapp/); found even where the editable
        # install predates it.
        webapp_dir = str(constants.REPO_ROOT / "webapp")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [webapp_dir, env.get("PYTHONPATH", "")]))
        return Service(WEBAPP, argv, self.log_dir / "webapp.log",
                       lambda: get_ok(f"{self.webapp_url}/healthz"), env=env,
                       live=answers(f"{self.webapp_url}/healthz"))

    def rollout(self):
        """A :class:`gourmetgram.rollout.local.LocalRollout` driving this stack's gateway."""
        from gourmetgram.rollout.local import LocalRollout

        return LocalRollout(self.gateway_url, self.control_token)

    @property
    def control_token_path(self) -> Path:
        return control.token_path(self.host, self.ports.gateway)

    @property
    def rollout_state_path(self) -> Path:
        """The gateway's saved rollout (what a restarted gateway routes by), in the state folder."""
        return self.control_token_path.parent / control.ROLLOUT_STATE_FILE

    def start(self) -> "LocalStack":
        """Start every service in order and wait for each to be ready; the supervisor watches
        each from its first start, so a start that fails is retried with back-off, and only
        one it gives up on stops all and raises (:class:`DependencyUnavailable`)."""
        if self.manifest.path is None:
            raise BadInput("the gateway reads the manifest from a file; pass a manifest path")
        check_ports_free(self.ports, self.host, names=self.used_ports())
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # A fresh control token per start, 0600 in the stack's state folder (the CLI reads it).
        self.control_token = control.write_token(self.control_token_path)
        # A new stack starts from its manifest; only a restarted gateway restores a rollout.
        self.rollout_state_path.unlink(missing_ok=True)
        try:
            for service, role in self._build_services():
                self.services[service.name] = service
                revision = self.revision if service in self.pair.services else None
                self.supervisor.start(service, self.log_dir, role, revision)
        except BaseException:
            self.stop()
            raise
        return self

    def components(self) -> list[dict]:
        """Each supervised process: name, state, restarts, pid, last exit code."""
        return self.supervisor.states()

    def stop_service(self, name: str) -> None:
        """Stop one service for good (not restarted), e.g. Triton, to see how the rest behaves."""
        service = self.services[name]
        self.supervisor.forget(service)
        service.stop()

    def stop(self) -> None:
        """Stop every service, last started first; safe to call twice."""
        self.supervisor.halt()  # nothing restarts from here on
        for service in reversed(list(self.services.values())):
            service.stop()
        self.supervisor.join()
        if self._prometheus_dir is not None:
            shutil.rmtree(self._prometheus_dir, ignore_errors=True)
            self._prometheus_dir = None
        if self.control_token is not None:
            self.control_token_path.unlink(missing_ok=True)
            self.rollout_state_path.unlink(missing_ok=True)

    def pids(self) -> dict[str, int | None]:
        return {name: s.pid for name, s in self.services.items()}

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
