"""HTTP client overhead: httpx's AsyncClient against aiohttp's ClientSession, in one run.

    .venv/bin/python benchmarks/http_client_overhead.py [--requests 3000] [--concurrency 16]
                                                        [--body-kb 20] [--rounds 3] [--quick]

Why: every served prediction crosses Python HTTP clients: gateway -> transformer, transformer ->
Triton, the inference logger's and the broker's events. This measures what the client itself
costs per request (CPU ms of this process, which only sends), against one local Starlette server
(uvicorn, in its own process) that reads the body and answers 600 bytes, the size of a
prediction. The two clients run in alternating rounds (``--rounds``), so load from elsewhere hits
both alike, on uvloop as the servers run them. It prints CPU ms per request for each (and the
round's wall time per request, the inverse of its throughput),
and ``httpx / aiohttp`` (> 1: aiohttp is cheaper). Issue 14 moved the request path to aiohttp
because of this figure (2.7-3.0 vs 0.27 CPU ms per 20 KB POST at concurrency 16, 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Awaitable, Callable

import aiohttp
import httpx
from harness import free_port, wait_http  # this folder's helpers

from gourmetgram.constants import HOST
from gourmetgram.errors import BadInput

ANSWER = b'{"predictions": [' + b"0" * 560 + b"]}"


def serve(port: int) -> None:
    """The server process: POST /predict reads the body and answers a prediction-sized JSON; GET / is 200."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def predict(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    async def ready(_request: Request) -> Response:
        return Response(b"ok")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/", ready)])
    uvicorn.run(app, host=HOST, port=port, log_level="warning")


async def _with_httpx(url: str, body: bytes, requests: int, concurrency: int) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(n: int) -> None:
            for _ in range(n):
                r = await client.post(url, content=body, headers={"content-type": "application/octet-stream"})
                r.raise_for_status()

        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))


async def _with_aiohttp(url: str, body: bytes, requests: int, concurrency: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.post(url, data=body, headers={"content-type": "application/octet-stream"}) as r:
                    await r.read()
                    r.raise_for_status()

        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))


CLIENTS: dict[str, Callable[[str, bytes, int, int], Awaitable[None]]] = {
    "httpx": _with_httpx, "aiohttp": _with_aiohttp}


def measure(url: str, body: bytes, requests: int, concurrency: int, rounds: int) -> dict[str, dict[str, float]]:
    """Best (least) CPU and wall ms per request of each client over alternating rounds."""
    import uvloop

    sent = (requests // concurrency) * concurrency
    best: dict[str, dict[str, float]] = {name: {"cpu_ms": float("inf"), "wall_ms": float("inf")} for name in CLIENTS}
    for r in range(rounds):
        for name in (list(CLIENTS) if r % 2 == 0 else list(CLIENTS)[::-1]):
            cpu, wall = time.process_time(), time.perf_counter()
            uvloop.run(CLIENTS[name](url, body, requests, concurrency))
            best[name]["cpu_ms"] = min(best[name]["cpu_ms"], (time.process_time() - cpu) / sent * 1e3)
            best[name]["wall_ms"] = min(best[name]["wall_ms"], (time.perf_counter() - wall) / sent * 1e3)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="requests per client per round")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--body-kb", type=float, default=20.0, help="POST body size (a JPEG is ~15-20 KB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a smoke run (a few seconds)")
    p.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the server process
    args = p.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.quick:
        args.requests, args.rounds = 200, 1
    if args.requests < 1 or args.concurrency < 1 or args.rounds < 1 or args.body_kb < 0:
        print("error: --requests, --concurrency and --rounds must be at least 1, --body-kb at least 0",
              file=sys.stderr)
        return 2
    concurrency = min(args.concurrency, args.requests)
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_http(HOST, port, "/", 60.0, server)
        best = measure(f"http://{HOST}:{port}/predict", b"x" * int(args.body_kb * 1024), args.requests,
                       concurrency, args.rounds)
    except BadInput as exc:
        print(f"error: the benchmark server did not come up: {exc}", file=sys.stderr)
        return 3
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.requests} POSTs of {args.body_kb:g} KB per client per round, concurrency {concurrency}, "
          f"{args.rounds} alternating rounds (best round shown)")
    print(f"{'client':<8} {'CPU ms/request':>15} {'wall ms/request':>16}")
    for name, figures in best.items():
        print(f"{name:<8} {figures['cpu_ms']:>15.3f} {figures['wall_ms']:>16.3f}")
    print(f"httpx / aiohttp CPU per request: {best['httpx']['cpu_ms'] / best['aiohttp']['cpu_ms']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
