"""The local stack's ports: one set per stack, free ephemeral ones for tests and parallel stacks,
and the check that nothing listens on them before it starts."""

from __future__ import annotations

import contextlib
import dataclasses
import socket

from gourmetgram import constants
from gourmetgram.errors import BadInput


@dataclasses.dataclass(frozen=True)
class Ports:
    """Every port the stack listens on (defaults from :mod:`gourmetgram.constants`)."""

    triton_http: int = constants.TRITON_HTTP_PORT
    triton_grpc: int = constants.TRITON_GRPC_PORT
    triton_metrics: int = constants.TRITON_METRICS_PORT
    transformer_http: int = constants.TRANSFORMER_HTTP_PORT
    transformer_grpc: int = constants.TRANSFORMER_GRPC_PORT
    gateway: int = constants.GATEWAY_PORT
    webapp: int = constants.WEBAPP_PORT  # only bound when the stack starts the web app
    detector: int = constants.DETECTOR_PORT
    prometheus: int = constants.PROMETHEUS_PORT

    @classmethod
    def free(cls, host: str = constants.HOST) -> "Ports":
        """Ephemeral ports nobody listens on now (tests, parallel stacks)."""
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.socket()) for _ in dataclasses.fields(cls)]
            for s in socks:
                s.bind((host, 0))
            return cls(*(s.getsockname()[1] for s in socks))

    def named(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def port_in_use(host: str, port: int) -> bool:
    """True when binding ``host:port`` fails (someone listens there)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT, as servers do
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports_free(ports: Ports, host: str = constants.HOST, skip: tuple[str, ...] = (),
                     names: set[str] | None = None) -> None:
    """``skip``: ports not checked; ``names``: only these are (those of the services that start)."""
    busy = [f"{name}={port}" for name, port in ports.named().items()
            if name not in skip and (names is None or name in names) and port_in_use(host, port)]
    if len(set(ports.named().values())) != len(ports.named()):
        raise BadInput(f"the stack's ports must differ: {ports.named()}")
    if busy:
        raise BadInput(f"port(s) already in use on {host}: {', '.join(busy)}; stop what listens "
                        "there or choose other ports (--ports NAME=PORT)")
