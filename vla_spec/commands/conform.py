"""``vla-spec conform IMPL``: judge an OpenVLA implementation by the spec's claims, as a table.

::

    vla-spec conform                                  # the native model on tiny-openvla (the spec itself)
    vla-spec conform http://127.0.0.1:8000 [--double-encode]   # a server in the reference REST protocol
    vla-spec conform /path/to/openvla-7b-finetuned-libero-object   # its remote code (tox -e reference)
    vla-spec conform mypackage.adapters:make_impl     # any object with decode / processor / act methods

Every claim of :data:`vla_spec.conformance.CLAIMS` whose adapter method IMPL has is checked; the
table gives each claim's verdict and first counterexample. Exit status 1 when a claim fails or a
check raised, 0 when every applicable claim holds. The same claims run under pytest:
``pytest -m cpu --impl IMPL``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vla_spec.commands import CliError


def register(subparsers: Any) -> None:
    """Add ``conform`` to the ``vla-spec`` parser."""
    conform = subparsers.add_parser(
        "conform",
        help="judge an OpenVLA implementation (module:factory, checkpoint folder or server URL) by the spec's claims",
        description="Run every spec claim that applies at the levels IMPL provides (decode, processor, policy) and "
        "print claim, verdict and first counterexample; the same as pytest -m cpu --impl IMPL.",
    )
    conform.add_argument(
        "impl",
        nargs="?",
        default=None,
        metavar="IMPL",
        help="http://HOST:PORT (a server in the reference REST protocol), a checkpoint folder (its remote code if its "
        "config.json has auto_map, else the native model), native:CHECKPOINT, hf-remote:FOLDER, or module:factory; "
        "default: the native model on tiny-openvla",
    )
    conform.add_argument("--double-encode", action="store_true", help='send {"encoded": ...} bodies (server URLs only)')
    conform.add_argument(
        "--norm-stats",
        metavar="PATH",
        help="the served checkpoint's statistics (server URLs only): its folder or name, or a dataset_statistics.json; "
        "default: the shipped statistics (those of the released OpenVLA checkpoints)",
    )
    conform.add_argument("--device", default="cpu", help="torch device for checkpoint implementations (default cpu)")
    conform.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="checkpoint dtype")
    conform.add_argument("--json", action="store_true", help="print one JSON object")
    conform.set_defaults(func=run_conform)


def read_stats(path: str | None) -> Any:
    """``--norm-stats``: None, a checkpoint's statistics (folder or name) or a dataset_statistics.json."""
    if path is None:
        return None
    from pathlib import Path

    from vla_spec.model.checkpoint import read_config
    from vla_spec.model.tiny import resolve_checkpoint
    from vla_spec.normalization import read_norm_stats_file

    if Path(path).is_file():
        return read_norm_stats_file(path)
    try:
        return read_config(resolve_checkpoint(path)).norm_stats
    except FileNotFoundError as error:
        raise CliError(f"--norm-stats: {error}; or give a dataset_statistics.json") from None


def check_reachable(impl: Any) -> None:
    """Any HTTP answer at the server's address will do; a refused connection is a :class:`CliError`."""
    import httpx

    try:
        impl.client.get(impl.url)
    except httpx.TransportError as error:
        raise CliError(f"cannot reach {impl.url} ({error}); is the server running (vla-spec serve CHECKPOINT)?") from None


def run_conform(args: argparse.Namespace) -> int:
    from vla_spec.adapters import HTTPImpl, load_impl
    from vla_spec.conformance import format_table, run_claims

    is_url = (args.impl or "").startswith(("http://", "https://"))
    for flag, given in (("--double-encode", args.double_encode), ("--norm-stats", args.norm_stats)):
        if given and not is_url:
            raise CliError(f"{flag} applies to a server URL (http://HOST:PORT) only")
    try:
        if is_url:
            impl = HTTPImpl(args.impl, double_encode=args.double_encode, norm_stats=read_stats(args.norm_stats))
        else:
            impl = load_impl(args.impl, dtype=args.dtype, device=args.device)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise CliError(f"IMPL: {error}") from None
    if isinstance(impl, HTTPImpl):
        check_reachable(impl)
    verdicts = run_claims(impl)
    if args.json:
        print(json.dumps({
            "impl": impl.name,
            "statistics_assumed": getattr(impl, "norm_stats", None) is None,
            "claims": [
                {"claim": v.claim.name, "test": v.claim.test, "sentence": v.claim.sentence, "verdict": v.status, "detail": v.detail}
                for v in verdicts
            ],
        }))
    else:
        print(format_table(verdicts, impl.name, stats_known=getattr(impl, "norm_stats", None) is not None))
    return 1 if any(v.status in ("fails", "error") for v in verdicts) else 0
