"""Native OpenVLA in PyTorch: config, towers, projector, Llama, decoding, loading.

The names below load on first use (PEP 562), so ``vla_spec.model.agreement``,
``vla_spec.model.checkpoint`` and ``vla_spec.model.tiny`` import without torch; torch, timm and
transformers load with the modules that need them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

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
