"""``from_pretrained``: read an OpenVLA checkpoint folder in the official Hugging Face format.

The folder holds ``config.json`` (``model_type: "openvla"``), the weights as one
``model.safetensors`` or as shards ``model-0000i-of-0000n.safetensors`` listed by
``model.safetensors.index.json``, the tokenizer files, and optionally ``dataset_statistics.json``,
which replaces ``config.json``'s ``norm_stats`` when present (as ``openvla_utils.get_vla`` does).

Loading is strict: a missing shard, a missing or unexpected tensor, or a tensor of the wrong
shape is an error that names the file and the tensor. The model is built on the meta device and
filled with ``load_state_dict(assign=True)``, so a 7B load holds one copy of the weights; the
only non-persistent buffer (Llama's rotary ``inv_freq``) is rebuilt on the target device.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import torch

from vla_spec.model import DECODERS
from vla_spec.model.checkpoint import CONFIG_FILE, INDEX_FILE, CheckpointError, read_config, weight_files
from vla_spec.model.modeling import OpenVLA
from vla_spec.model.tokenizer import load_tokenizer

def read_state_dict(
    folder: Path, expected: dict[str, torch.Size], dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Read every tensor, checking names and shapes against ``expected`` (the model's state dict)."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for shard, indexed in weight_files(folder).items():
        path = folder / shard
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names = list(handle.keys())
            for name in indexed:
                if name not in names:
                    raise CheckpointError(f"{path} lacks tensor {name!r}, which {INDEX_FILE} places in it")
            for name in names:
                if name not in expected:
                    raise CheckpointError(
                        f"unexpected tensor {name!r} in {path}: the model built from {CONFIG_FILE} has no such "
                        "parameter (wrong architecture, or a checkpoint of another format)"
                    )
                if name in state:
                    raise CheckpointError(f"tensor {name!r} appears twice: in {origin[name]} and {path}")
                tensor = handle.get_tensor(name)
                if tensor.shape != expected[name]:
                    raise CheckpointError(
                        f"tensor {name!r} in {path} has shape {list(tensor.shape)}, but {CONFIG_FILE} implies "
                        f"{list(expected[name])}"
                    )
                state[name] = tensor.to(device=device, dtype=dtype)
                origin[name] = str(path)
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5])
        raise CheckpointError(
            f"{len(missing)} tensors missing from the weights in {folder}: {shown}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    return state


def _rebuild_rotary(model: OpenVLA, device: torch.device) -> None:
    rotary = model.language_model.model.rotary_emb
    with torch.device(device):
        model.language_model.model.rotary_emb = type(rotary)(config=model.language_model.config)


BACKENDS = ("native", "hf-remote")


def from_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    tokenizer: Any = None,
    backend: str = "native",
) -> Any:
    """Load an OpenVLA checkpoint folder; returns :class:`OpenVLA` in eval mode.

    ``dtype``: the parameter dtype (the released weights are bfloat16; the reference evaluates in
    bfloat16; the CPU tier uses float32). ``tokenizer``: override the folder's tokenizer.
    ``backend="hf-remote"`` returns :class:`vla_spec.model.hf_remote.HFRemoteOpenVLA` instead (the
    checkpoint's own remote code, ``trust_remote_code=True``), with the same ``predict_action``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "hf-remote":
        from vla_spec.model.hf_remote import HFRemoteOpenVLA

        return HFRemoteOpenVLA(path, dtype=dtype, device=device)
    folder = Path(path)
    config = read_config(folder)
    text_tokenizer = tokenizer if tokenizer is not None else load_tokenizer(folder)
    target = torch.device(device)
    with torch.device("meta"):
        model = OpenVLA(config, text_tokenizer)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    state = read_state_dict(folder, expected, dtype, target)
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_rotary(model, target)
    leftovers = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointError(f"tensors left uninitialized after loading {folder}: {leftovers[:5]}")
    return model.eval()


def load_cached(path: str, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", decoder: str = "naive") -> OpenVLA:
    """:func:`from_pretrained`, once per process and (path, dtype, device, decoder): for test sessions
    and policies. ``decoder`` is one of :data:`DECODERS`; ``fast`` is a shallow copy of the ``naive``
    model (the same weights in memory) set up by :func:`use_decoder`.

    Treat the result as shared and read-only (do not swap its decoder or patch it in place).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    return _load_cached(path, dtype, device, decoder)


@cache
def _load_cached(path: str, dtype: torch.dtype, device: str, decoder: str) -> OpenVLA:
    if decoder == "naive":
        return from_pretrained(path, dtype=dtype, device=device)
    return use_decoder(copy.copy(_load_cached(path, dtype, device, "naive")), decoder)


def use_decoder(model: OpenVLA, decoder: str) -> OpenVLA:
    """``model`` (as loaded: the ``naive`` decoder) set up, in place, to decode with ``decoder``, one
    of :data:`DECODERS`: ``fast`` is :func:`vla_spec.model.fast_decoding.accelerate`; returns it."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    if decoder == "fast":
        from vla_spec.model.fast_decoding import accelerate

        accelerate(model)
    return model
