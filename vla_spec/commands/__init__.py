"""The ``vla-spec`` subcommands, one module each with ``register(subparsers)``.

:class:`CliError` is the one exception the command line turns into a one-line message and exit
status 2: a command raises it for bad input it can name (an unknown key, a bad range, a missing
file). Anything else that escapes a command is a bug and keeps its traceback.
"""


class CliError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""
