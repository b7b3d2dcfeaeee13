"""Request-size limits enforced while the body streams in, before any work is done on it.

Reading a whole body and then checking its length lets one client make a server hold any
amount of memory. Here a declared ``Content-Length`` over the limit is refused before a
byte of the body is read, and a body without one (chunked) is counted chunk by chunk and
refused as soon as it passes the limit. Used by the gateway (route level, :func:`read_body`)
and by the transformer and the drift detector (ASGI middleware, :class:`BodyLimit`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gourmetgram.errors import PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MiB = 1024 * 1024


class BodyTooLarge(PayloadTooLarge):
    """The request body is (or declares itself) larger than ``limit`` bytes: answer 413."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        self.limit, self.size = limit, size
        said = f"{size} bytes" if size is not None else f"over {limit} bytes"
        super().__init__(f"request body is {said}; the limit is {limit} bytes")


def declared_length(headers: Any) -> int | None:
    """``Content-Length`` as an int, None when absent; a malformed one counts as too large
    (h11 refuses it anyway, this keeps the check total)."""
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return -1


def check_declared(headers: Any, limit: int) -> None:
    length = declared_length(headers)
    if length is not None and (length < 0 or length > limit):
        raise BodyTooLarge(limit, length if length >= 0 else None)


async def read_body(request: Any, limit: int) -> bytes:
    """A Starlette request's body, at most ``limit`` bytes, else :class:`BodyTooLarge`.

    The declared length is checked first; the stream is counted as it arrives and reading
    stops at the first chunk past the limit (what was read so far is dropped).
    """
    check_declared(request.headers, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            chunks.clear()
            raise BodyTooLarge(limit)
        if chunk:
            chunks.append(chunk)
    return b"".join(chunks)


async def send_413(send: Send, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, before the app sees it.

    With ``Content-Length`` the check is on the header (the server enforces that the body
    matches it); without one the body is counted as it arrives, buffered up to the limit and
    replayed to the app, or refused at the first chunk past the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            check_declared(headers, self.max_bytes)
        except BodyTooLarge as exc:
            await send_413(send, str(exc))
            return
        if "content-length" in headers or scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                messages.append(message)
                break
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                messages.clear()
                await send_413(send, str(BodyTooLarge(self.max_bytes)))
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)
