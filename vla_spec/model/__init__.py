"""Native OpenVLA in PyTorch: config, towers, projector, Llama, decoding, loading.

The names below load on first use (PEP 562), so ``vla_spec.model.agreement``,
``vla_spec.model.checkpoint`` and ``vla_spec.model.tiny`` import without torch; torch, timm and
transformers load with the modules that need them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: The greedy decoders a loaded model can run (:func:`vla_spec.model.loading.load_cached`): ``fast``
#: (:func:`vla_spec.model.fast_decoding.accelerate`: a static KV cache; on CUDA also CUDA graphs and
#: compiled towers) and ``naive`` (the reference's loop over transformers' dynamic KV cache,
#: :func:`vla_spec.model.decoding.greedy_decode`). Their tokens agree except at near-ties of the
#: logits (benchmarks/README.md).
DECODERS = ("fast", "naive")

_HOMES = {
    "CheckpointError": "vla_spec.model.checkpoint",
    "GreedyResult": "vla_spec.model.decoding",
    "OpenVLA": "vla_spec.model.modeling",
    "OpenVLAConfig": "vla_spec.model.config",
    "Prefix": "vla_spec.model.network",
    "from_pretrained": "vla_spec.model.loading",
    "greedy_decode": "vla_spec.model.decoding",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vla_spec.model' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
