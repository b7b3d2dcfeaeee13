"""``gourmetgram serve``: run Triton, the transformer and the gateway for one stage locally."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time

from gourmetgram import constants
from gourmetgram.errors import UserError

STAGE_CHOICES = (constants.STAGING, constants.PRODUCTION)


def parse_ports(items: list[str] | None, free: bool = False):
    """``NAME=PORT`` items over the defaults (or over free ports with ``--free-ports``)."""
    from gourmetgram.local.stack import Ports

    ports = Ports.free() if free else Ports()
    names = ports.named()
    changes: dict[str, int] = {}
    for item in items or []:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in names:
                raise UserError(f"--ports {part!r}: expected NAME=PORT with NAME one of {', '.join(names)}")
            try:
                port = int(value)
            except ValueError:
                raise UserError(f"--ports {part!r}: {value!r} is not a port number") from None
            if not 1 <= port <= 65535:
                raise UserError(f"--ports {part!r}: port must be within 1..65535")
            changes[name] = port
    return dataclasses.replace(ports, **changes)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    from gourmetgram.local.stack import LocalStack

    ports = parse_ports(args.ports, args.free_ports)
    loop = None
    extra: dict = {}
    if args.loop:
        from gourmetgram.local.loop import LoopServices
        from gourmetgram.local.stack import registered_bundle
        from gourmetgram.tracking import home

        # the logger goes to the broker, which fans out to the detector's port and the capture sink
        bundle = args.bundle or registered_bundle(args.stage)
        if args.model_version is None and not args.bundle:
            from gourmetgram import registry

            args.model_version = registry.version_for(args.stage)
        loop = LoopServices(bundle, home() / "logs" / f"serve-{args.stage}", host=args.host,
                            detector_url=f"http://{args.host}:{constants.DETECTOR_PORT}/",
                            capture_port=None if args.free_ports else constants.CAPTURE_PORT,
                            broker_port=None if args.free_ports else constants.BROKER_PORT)
        extra = {"logger_url": loop.broker_url + "/", "feedback_url": loop.capture_url,
                 "model_version": args.model_version}
    stack = LocalStack(bundle=args.bundle, stage=args.stage, ports=ports, host=args.host,
                       manifest=args.manifest, webapp=not args.no_webapp, **extra)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops as cleanly as Ctrl-C
    print(f"starting {stack.manifest.name} ({args.stage}) from {stack.bundle}; logs in {stack.log_dir}",
          flush=True)
    try:
        if loop is not None:
            loop.start()
        with stack:
            print("ready:")
            endpoints = stack.endpoints()
            if loop is not None:
                endpoints.update({"broker (logger fan-out)": loop.broker_url, "capture sink": loop.capture_url})
            for name, url in endpoints.items():
                print(f"  {name:<20} {url}")
            print("Ctrl-C to stop.", flush=True)
            while True:
                dead = [s for s in stack.services.values() if not s.alive()]
                if dead:
                    s = dead[0]
                    print(f"error: {s.name} exited (code {s.proc.returncode if s.proc else None}); stopping the stack. "
                          f"Log {s.log_path}:\n{s.log_tail()}", file=sys.stderr)
                    return 1
                time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping...", flush=True)
    finally:
        if loop is not None:
            loop.stop()
    print("stopped.", flush=True)
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the stage's registered model locally (Triton + transformer + gateway + web app)",
        description="Start PyTriton with the exported model, the KServe transformer and the local "
        "gateway that reads inference_services/<stage>.yaml, and the web app (user and operator pages) "
        "in front of the gateway; stop all of them on Ctrl-C or SIGTERM.")
    parser.add_argument("--stage", choices=STAGE_CHOICES, default=constants.STAGING,
                        help="which InferenceService manifest to serve (default: %(default)s)")
    parser.add_argument("--bundle", help="export bundle folder (default: the bundle of the version "
                        "the MLflow registry alias --stage points at)")
    parser.add_argument("--manifest", help="InferenceService YAML (default: inference_services/<stage>.yaml)")
    parser.add_argument("--ports", nargs="+", metavar="NAME=PORT",
                        help="override ports: triton_http, triton_grpc, triton_metrics, "
                        "transformer_http, transformer_grpc, gateway, webapp")
    parser.add_argument("--free-ports", action="store_true", help="start from free ephemeral ports")
    parser.add_argument("--no-webapp", action="store_true",
                        help=f"do not start the web app (default: on port {constants.WEBAPP_PORT})")
    parser.add_argument("--host", default=constants.HOST, help="address to bind (default: %(default)s)")
    parser.add_argument("--loop", action="store_true",
                        help="also start the capture sink + feedback API (8071) and the broker (8060) that "
                        "fans the logger's events out to it and to the drift detector (8070)")
    parser.add_argument("--model-version", help="registered version of the bundle, recorded with captures "
                        "(default: the version the stage's registry alias points at, without --bundle)")
    parser.set_defaults(func=_serve)
