"""Errors a person can act on, by cause.

Each cause carries its exit code (``exit_code``) and its HTTP status (``http_status``), and
each is applied in ONE place: :func:`entry_point` wraps the ``main()`` of every process (the
``gourmetgram`` CLI and every server's ``python -m``), printing the message and exiting with the
code; :mod:`gourmetgram.http_errors` is the one Starlette exception handler of every HTTP server,
answering ``{"error": message}`` with the status.

====  ======  ==========================  =================================================
exit  HTTP    class                       meaning
====  ======  ==========================  =================================================
1     409     :class:`CheckFailed`        the command ran, a check failed (evaluation gate,
                                          SLO, canary analysis / rollback)
2     400     :class:`BadInput`           bad input from a person: arguments, a config file,
                                          a dataset on disk, a request body (4xx subclasses:
                                          :class:`Unauthorized` 401, :class:`PayloadTooLarge`
                                          413, :class:`UnsupportedMediaType` 415,
                                          :class:`TooManyRequests` 429)
3     503     :class:`DependencyUnavailable`  something needed is not there: Prometheus, the
                                          Kubernetes API, MLflow, a database, Label Studio,
                                          a service that did not come up
====  ======  ==========================  =================================================

Anything that is not a :class:`GourmetGramError` is a bug and keeps its traceback (a 500 on
HTTP). Every message says what to do next.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ClassVar, ParamSpec

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DEPENDENCY_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


class GourmetGramError(Exception):
    """Base of the errors reported without a traceback; subclass by cause.

    ``http_status`` is a class attribute a subclass sets, or an instance sets when one class of
    request error has several answers; ``retry_after_s`` becomes a ``Retry-After`` header."""

    exit_code: ClassVar[int] = EXIT_CHECK_FAILED
    http_status: int = 500
    retry_after_s: int | None = None


class BadInput(GourmetGramError):
    """Bad input from a person: a config file, a dataset on disk, a CLI argument, a request."""

    exit_code = EXIT_BAD_INPUT
    http_status = 400



class Unauthorized(BadInput):
    """A request without the token the endpoint needs."""

    http_status = 401


class PayloadTooLarge(BadInput):
    """A request body over the endpoint's limit."""

    http_status = 413


class UnsupportedMediaType(BadInput):
    """A request body in a format the endpoint does not take."""

    http_status = 415


class TooManyRequests(BadInput):
    """A caller over its quota; ``retry_after_s`` says when to come back."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CheckFailed(GourmetGramError):
    """The command ran and a check failed: an evaluation gate, an SLO, a canary analysis."""

    exit_code = EXIT_CHECK_FAILED
    http_status = 409


class DependencyUnavailable(GourmetGramError):
    """Prometheus, the Kubernetes API, MLflow or a local service is unreachable or did not start."""

    exit_code = EXIT_DEPENDENCY_UNAVAILABLE
    http_status = 503


class DatasetError(BadInput):
    """A dataset on disk does not follow the Food-11 layout or holds bad files."""


class ConfigError(BadInput):
    """A configuration file is missing, unparsable or holds invalid values."""


P = ParamSpec("P")


def entry_point(main: Callable[P, int | None]) -> Callable[P, int]:
    """The one mapping from errors to exit codes, for every process's ``main()``: a
    :class:`GourmetGramError` prints ``error: <message>`` on stderr and exits with its cause's
    code, Ctrl-C exits 130; anything else is a bug and keeps its traceback."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or EXIT_OK)
        except GourmetGramError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return run
