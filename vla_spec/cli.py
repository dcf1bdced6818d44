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

from vla_spec import __version__
from vla_spec.commands import CliError, conform, serve, sim, spec

__all__ = ["CliError", "build_parser", "main"]

# Each module defines ``register(subparsers)``, which adds its parsers and sets ``func`` on them.
COMMAND_MODULES = (spec, sim, conform, serve)


DESCRIPTION = """An executable specification of OpenVLA-style vision-language-action policies:
decode action tokens, run LIBERO episodes into resumable logs, report success rates."""
EPILOG = """examples:
  vla-spec decode 31882 31894 31881 31905 31888 31875 31999 --unnorm-key libero_object
  vla-spec rollout --suite libero_object --tasks 0-9 --inits 0-1 --policy openvla \\
      --checkpoint tiny-vla-libero-object --workers 2 --log runs/first-vla.jsonl
  vla-spec report runs/first-vla.jsonl --plot runs/first-vla.png

'vla-spec COMMAND --help' describes each command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-spec", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    except KeyboardInterrupt:  # before a command could say more (``rollout`` reports what is kept)
        print(f"vla-spec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
