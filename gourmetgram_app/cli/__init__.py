"""The ``gourmetgram`` command line: one subcommand per module in ``commands/``."""
