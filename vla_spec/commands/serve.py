"""``vla-spec serve CHECKPOINT``: a policy server in the reference REST protocol (:mod:`vla_spec.serve`).

::

    vla-spec serve tiny-vla-libero-object [--host 127.0.0.1 --port 8000] [--max-batch-size 8 --max-wait-ms 5]
    vla-spec rollout --suite libero_object --tasks 0 --inits 0 --policy http://127.0.0.1:8000 --log runs/h.jsonl
    vla-spec conform http://127.0.0.1:8000

Binds the loopback interface unless ``--host`` says otherwise. The native model serves by default,
with the fast decoder (``--decoder``, as the rollout's OpenVLA policy); the checkpoint's own remote
code is loaded only with ``--trust-remote-code``. The checkpoint is
loaded (and a bad one refused) before the port is bound.
"""

from __future__ import annotations

import argparse
from typing import Any

from vla_spec.commands import CliError


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``vla-spec`` parser."""
    from vla_spec.model import DECODERS
    from vla_spec.rest import DEFAULT_PORT

    serve = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over HTTP in the reference REST protocol (POST /act, json-numpy), batching requests",
        description="Serve CHECKPOINT as OpenVLA's deploy.py does (POST /act with a json-numpy body), with concurrent "
        "requests batched into one predict_action and bad input answered 4xx.",
    )
    serve.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder (HF format) or name (tiny-vla-libero-object)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    serve.add_argument("--max-batch-size", type=int, default=8, help="most requests in one predict_action (default 8)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a request waits for others to batch with (default 5)")
    serve.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted, MB (default 8); larger: 413")
    serve.add_argument("--device", default="cpu", help="torch device (default cpu)")
    serve.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype (default float32)")
    serve.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    serve.add_argument(
        "--decoder",
        choices=DECODERS,
        help="the native model's greedy decoder: fast (default: static KV cache, CUDA graphs on a GPU) or naive (the reference's loop)",
    )
    serve.add_argument(
        "--trust-remote-code", action="store_true", help="serve with the checkpoint's own remote code (runs code from the folder)"
    )
    serve.set_defaults(func=run_serve)


def load_model(args: argparse.Namespace) -> Any:
    """The model to serve, checked as the rollout's OpenVLA policy checks it; :class:`CliError` if
    unusable (the device, threads and checkpoint name are checked before torch is imported)."""
    from vla_spec.model.checkpoint import CheckpointError
    from vla_spec.model.tiny import resolve_checkpoint
    from vla_spec.sim import PolicySetupError
    from vla_spec.sim.openvla_policy import check_device

    try:
        check_device(args.device)
    except PolicySetupError as error:
        raise CliError(f"--device: {error}") from None
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be at least 1, got {args.threads}")
    if args.trust_remote_code and args.decoder is not None:
        raise CliError("--decoder applies to the native model; the remote code decodes with its own generate: drop one of them")
    try:
        folder = resolve_checkpoint(args.checkpoint)
    except FileNotFoundError as error:
        raise CliError(f"CHECKPOINT: {error}") from None
    import torch

    from vla_spec.model.loading import from_pretrained, use_decoder

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backend = "hf-remote" if args.trust_remote_code else "native"
    try:
        model = from_pretrained(folder, dtype=getattr(torch, args.dtype), device=args.device, backend=backend)
    except (FileNotFoundError, CheckpointError) as error:
        raise CliError(f"CHECKPOINT: {error}") from None
    return use_decoder(model, args.decoder or "fast") if backend == "native" else model


def run_serve(args: argparse.Namespace) -> int:
    from vla_spec.rest import require_serve_extra

    try:
        require_serve_extra()
    except ImportError as error:
        raise CliError(str(error)) from None
    import uvicorn

    from vla_spec.serve import ServeOptions, create_app

    try:
        options = ServeOptions(args.max_batch_size, args.max_wait_ms, int(args.max_body_mb * 1024 * 1024))
    except ValueError as error:
        raise CliError(str(error)) from None
    model = load_model(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"vla-spec serve: warning: binding {args.host}: the server is reachable beyond this machine")
    uvicorn.run(create_app(model, options), host=args.host, port=args.port, log_level="info")
    return 0
