"""The one exception handler of every Starlette server (capture sink, drift detector, broker,
retrain receiver, gateway): a :class:`~gourmetgram.errors.GourmetGramError` raised by an
endpoint becomes ``{"error": message}`` with its cause's HTTP status (and ``Retry-After`` when it
has one). Anything else stays a bug: Starlette's 500 with the traceback in the log.

    Starlette(routes=..., exception_handlers=EXCEPTION_HANDLERS)
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gourmetgram.errors import GourmetGramError


def error_response(exc: GourmetGramError) -> JSONResponse:
    headers = {"retry-after": str(exc.retry_after_s)} if exc.retry_after_s else None
    return JSONResponse({"error": str(exc)}, status_code=exc.http_status, headers=headers)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GourmetGramError)  # registered for that class only
    return error_response(exc)


EXCEPTION_HANDLERS = {GourmetGramError: _handle}
