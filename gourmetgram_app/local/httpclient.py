"""The gateway's data-plane HTTP client: one aiohttp session per sender, and how its failures read.

Every prediction passes the gateway, and each one is forwarded (routing), logged (the inference
logger) and sometimes mirrored (the shadow). aiohttp's ``ClientSession`` spends about a tenth of
the CPU per request that httpx's ``AsyncClient`` does (``benchmarks/http_client_overhead.py``:
0.21 vs 2.8 CPU ms per 20 KB POST at concurrency 16 on 2 cores), so the whole request path uses it; the CLI and the tests
keep httpx, which is not on that path.

The sessions behave as the httpx clients before them did, where a client can tell:

* no redirects are followed (pass ``allow_redirects=False``; a 3xx goes back to the caller);
* no cookies are kept between requests (a proxy must not mix its callers' cookies);
* compressed answers are decoded (gzip, deflate, br: the same ``Accept-Encoding`` httpx sent),
  so the caller gets plain bytes and the sender drops ``Content-Encoding``;
* a body without a content type is sent without one (``NO_CONTENT_TYPE``), where aiohttp
  would add ``application/octet-stream``.
"""

from __future__ import annotations

import asyncio

import aiohttp

# What a request through these sessions can fail with (httpx.HTTPError before): aiohttp's own
# errors, and timeouts (aiohttp raises asyncio.TimeoutError or a subclass of it).
FAILED: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError)
# No connection within ``sock_connect``: the peer is not there (httpx.ConnectTimeout before).
# A subclass of asyncio.TimeoutError: catch it before the timeouts that mean "too slow".
CONNECT_TIMEOUT = aiohttp.ConnectionTimeoutError
TIMEOUT = asyncio.TimeoutError
NO_CONTENT_TYPE = ("Content-Type",)  # skip_auto_headers= for bodies passed on as they came


def timeout(total_s: float, connect_s: float | None = None) -> aiohttp.ClientTimeout:
    """``total_s`` for the whole exchange (waiting for a pooled connection included, as httpx's
    pool timeout was); ``connect_s`` for opening a new connection (httpx's connect timeout)."""
    return aiohttp.ClientTimeout(total=total_s, sock_connect=connect_s)


def session(limit: int, total_s: float, connect_s: float | None = None) -> aiohttp.ClientSession:
    """A session with at most ``limit`` connections; create it on the loop that will use it."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=timeout(total_s, connect_s),
                                 cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True)
