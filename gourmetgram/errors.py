"""Errors a person can act on.

Every entry point (CLI, pipeline component, HTTP server) turns a :class:`UserError`
into a clear message: a non-zero exit with the reason on the CLI, a 4xx over HTTP.
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from a person: a config file, a dataset on disk, a CLI argument."""


class DatasetError(UserError):
    """A dataset on disk does not follow the Food-11 layout or holds bad files."""


class ConfigError(UserError):
    """A configuration file is missing, unparsable or holds invalid values."""
