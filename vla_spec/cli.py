"""The ``vla-spec`` command line. Each subcommand lives in its own module with ``register(subparsers)``.

Subcommand modules import heavy dependencies (torch, LIBERO) inside their handlers, never at module
import, so ``vla-spec decode`` stays instant. Only :class:`~vla_spec.commands.CliError` (bad input the
command could name) becomes a one-line message with exit status 2; any other exception is a bug and
propagates with its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vla_spec.commands import CliError, sim, spec

__all__ = ["CliError", "build_parser", "main"]

# Each module defines ``register(subparsers)``, which adds its parsers and sets ``func`` on them.
COMMAND_MODULES = (spec, sim)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-spec", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as error:
        print(f"vla-spec {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
