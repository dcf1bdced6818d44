"""The ``vla-spec`` command line. Each subcommand lives in its own module with ``register(subparsers)``.

Subcommand modules import heavy dependencies (torch, LIBERO) inside their handlers, never at module
import, so ``vla-spec decode`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines ``register(subparsers)``, which adds its parsers and sets ``func`` on them.
COMMAND_MODULES: tuple[str, ...] = ("vla_spec.commands.spec", "vla_spec.commands.sim")


class CliError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-spec", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"vla-spec {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Under ``python -m vla_spec.cli`` this file is ``__main__``, a second copy of the module whose
    # CliError is not the class the subcommands raise: run the package module's main instead.
    from vla_spec.cli import main as package_main

    sys.exit(package_main())
