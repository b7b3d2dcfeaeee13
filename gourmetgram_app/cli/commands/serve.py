"""``gourmetgram serve``: run Triton, the transformer, the gateway, the drift detector and
Prometheus for one stage locally, restarting any that crashes (see gourmetgram_app.local.supervisor)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path

from gourmetgram import constants
from gourmetgram.bundle import Bundle
from gourmetgram.errors import BadInput

STAGE_CHOICES = (constants.STAGING, constants.PRODUCTION)


def parse_ports(items: list[str] | None, free: bool = False):
    """``NAME=PORT`` items over the defaults (or over free ports with ``--free-ports``)."""
    from gourmetgram_app.local.ports import Ports

    ports = Ports.free() if free else Ports()
    names = ports.named()
    changes: dict[str, int] = {}
    for item in items or []:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in names:
                raise BadInput(f"--ports {part!r}: expected NAME=PORT with NAME one of {', '.join(names)}")
            try:
                port = int(value)
            except ValueError:
                raise BadInput(f"--ports {part!r}: {value!r} is not a port number") from None
            if not 1 <= port <= 65535:
                raise BadInput(f"--ports {part!r}: port must be within 1..65535")
            changes[name] = port
    return dataclasses.replace(ports, **changes)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _side_services(args: argparse.Namespace, bundle: Path) -> tuple[bool, bool]:
    """Whether to run the drift detector and Prometheus; says why not when one is skipped."""
    from gourmetgram.rollout.prometheus import PROMETHEUS_BIN

    detector = args.detector and Bundle(bundle).has_detector()
    if args.detector and not detector:
        print(f"note: no drift detector in {bundle} (build one: gourmetgram detector build); "
              "serving without it", flush=True)
    prometheus = args.prometheus and Path(PROMETHEUS_BIN).is_file()
    if args.prometheus and not prometheus:
        print(f"note: {PROMETHEUS_BIN} not found (apt-get install prometheus); serving without "
              "Prometheus", flush=True)
    return detector, prometheus


def _printer():
    """on_event for the supervisor: each crash with its exit code and log tail, each restart,
    then one status line with every component's state and restart count."""
    lock = threading.Lock()
    holder: dict = {}

    def on_event(event) -> None:
        with lock:
            stream = sys.stderr if event.kind in ("crashed", "gave-up") else sys.stdout
            print(f"[{time.strftime('%H:%M:%S')}] {event.message}", file=stream, flush=True)
            if event.log_tail:
                tail = "\n".join("    | " + line for line in event.log_tail.splitlines())
                print(f"    last lines of its log:\n{tail}", file=stream, flush=True)
            if "stack" in holder:
                print(f"status: {holder['stack'].supervisor.status_line()}", flush=True)

    return on_event, holder


def _serve(args: argparse.Namespace) -> int:
    from gourmetgram_app.local.bundles import registered_bundle
    from gourmetgram_app.local.stack import LocalStack

    ports = parse_ports(args.ports, args.free_ports)
    bundle = Path(args.bundle).resolve() if args.bundle else registered_bundle(args.stage)
    detector, prometheus = _side_services(args, bundle)
    on_event, holder = _printer()
    if args.loop:
        from gourmetgram_app.local.loop import closed_loop

        # the logger goes to the broker, which fans out to the detector and the capture sink; the
        # stack's Prometheus sends the chart's alerts to Alertmanager, which routes the retrain
        # alerts to the receiver, which starts a run (export, retrain, staging gate, canary)
        if args.model_version is None and not args.bundle:
            from gourmetgram import registry

            args.model_version = registry.version_for(args.stage)
        closed = closed_loop(bundle, args.stage, ports, host=args.host, model_version=args.model_version,
                             fixed_ports=not args.free_ports, detector=detector, prometheus=prometheus,
                             webapp=not args.no_webapp, manifest=args.manifest, on_event=on_event)
        for note in closed.notes:
            print(f"note: {note}", flush=True)
        stack, endpoints = closed.stack, closed.endpoints
    else:
        stack = LocalStack(bundle=bundle, stage=args.stage, ports=ports, host=args.host,
                           manifest=args.manifest, webapp=not args.no_webapp, detector=detector,
                           prometheus=prometheus, on_event=on_event)
        endpoints = stack.endpoints
    holder["stack"] = stack
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops as cleanly as Ctrl-C
    print(f"starting {stack.manifest.name} ({args.stage}) from {stack.bundle}; logs in {stack.log_dir}",
          flush=True)
    try:
        with stack:
            print("ready:")
            for name, url in endpoints().items():
                print(f"  {name:<20} {url}")
            print(f"status: {stack.supervisor.status_line()}")
            print("a crashed process is restarted with back-off; Ctrl-C to stop.", flush=True)
            # Exits only on Ctrl-C/SIGTERM, or when a process keeps failing to start.
            while not stack.supervisor.gave_up.wait(1.0):
                pass
            print(f"error: {stack.supervisor.failure}; stopping the stack", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("stopping...", flush=True)
    print("stopped.", flush=True)
    return 3 if stack.supervisor.gave_up.is_set() else 0  # 3: a dependency did not come up


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the stage's registered model locally (Triton + transformer + gateway + "
        "web app + detector + Prometheus)",
        description="Start PyTriton with the exported model, the KServe transformer, the local "
        "gateway that reads inference_services/<stage>.yaml, the web app (user and operator pages) in "
        "front of the gateway, the drift detector and Prometheus. A start that fails is retried, and "
        "a process that exits or hangs (stops answering its liveness probe for 60 s) is restarted, "
        "with exponential back-off (the gateway answers 503 with Retry-After meanwhile); serve gives "
        "up (exit 3) only when one fails to start 5 times in a row. Stop all of them with Ctrl-C or "
        "SIGTERM.")
    parser.add_argument("--stage", choices=STAGE_CHOICES, default=constants.STAGING,
                        help="which InferenceService manifest to serve (default: %(default)s)")
    parser.add_argument("--bundle", help="export bundle folder (default: the bundle of the version "
                        "the MLflow registry alias --stage points at)")
    parser.add_argument("--manifest", help="InferenceService YAML (default: inference_services/<stage>.yaml)")
    parser.add_argument("--ports", nargs="+", metavar="NAME=PORT",
                        help="override ports: triton_http, triton_grpc, triton_metrics, "
                        "transformer_http, transformer_grpc, gateway, webapp, detector, prometheus")
    parser.add_argument("--free-ports", action="store_true", help="start from free ephemeral ports")
    parser.add_argument("--no-webapp", action="store_true",
                        help=f"do not start the web app (default: on port {constants.WEBAPP_PORT})")
    parser.add_argument("--host", default=constants.HOST, help="address to bind (default: %(default)s)")
    parser.add_argument("--loop", action="store_true",
                        help="also start the capture sink + feedback API (8071), the broker (8060) that "
                        "fans the logger's events out to it and to the drift detector (8070), and (with "
                        "Prometheus) Alertmanager (9093) routing the retrain alerts to the retrain "
                        "receiver (8073), which retrains, stages and canaries by itself")
    parser.add_argument("--model-version", help="registered version of the bundle, recorded with captures "
                        "(default: the version the stage's registry alias points at, without --bundle)")
    parser.add_argument("--no-detector", dest="detector", action="store_false",
                        help="do not run the bundle's drift detector (default: run it when built)")
    parser.add_argument("--no-prometheus", dest="prometheus", action="store_false",
                        help="do not run a local Prometheus scraping the stack (default: run it)")
    parser.set_defaults(func=_serve)
