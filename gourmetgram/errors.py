"""Errors a person can act on, by cause.

Each cause has its exit code (``exit_code``), mapped in ONE place: the CLI entry
(:func:`gourmetgram_app.cli.main.main`), which prints the message and exits with it:

====  ==========================  =========================================================
code  class                       meaning
====  ==========================  =========================================================
1     :class:`CheckFailed`        the command ran, a check failed (evaluation gate, SLO,
                                  canary analysis / rollback)
2     :class:`BadInput`           bad input from a person: arguments, a config file, a
                                  dataset on disk (``UserError`` is the same class)
3     :class:`DependencyUnavailable`  something the command needs is not there: Prometheus,
                                  the Kubernetes API, MLflow, a service that did not come up
====  ==========================  =========================================================

Pipeline components and HTTP servers turn :class:`BadInput` into a clear message (a
non-zero exit, a 4xx). Anything that is not a :class:`GourmetGramError` is a bug and keeps
its traceback. Every message says what to do next.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DEPENDENCY_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


class GourmetGramError(Exception):
    """Base of the errors the CLI reports without a traceback; subclass by cause."""

    exit_code: ClassVar[int] = EXIT_CHECK_FAILED


class BadInput(GourmetGramError):
    """Bad input from a person: a config file, a dataset on disk, a CLI argument."""

    exit_code = EXIT_BAD_INPUT


# The name the code base used before errors had causes; other code keeps using it.
UserError = BadInput


class CheckFailed(GourmetGramError):
    """The command ran and a check failed: an evaluation gate, an SLO, a canary analysis."""

    exit_code = EXIT_CHECK_FAILED


class DependencyUnavailable(GourmetGramError):
    """Prometheus, the Kubernetes API, MLflow or a local service is unreachable or did not start."""

    exit_code = EXIT_DEPENDENCY_UNAVAILABLE


class DatasetError(BadInput):
    """A dataset on disk does not follow the Food-11 layout or holds bad files."""


class ConfigError(BadInput):
    """A configuration file is missing, unparsable or holds invalid values."""
