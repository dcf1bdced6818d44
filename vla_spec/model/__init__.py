"""Native OpenVLA in PyTorch: config, towers, projector, Llama, decoding, loading.

Heavy imports (torch, timm, transformers) happen only when this package is imported.
"""

from vla_spec.model.config import OpenVLAConfig
from vla_spec.model.decoding import GreedyResult, greedy_decode
from vla_spec.model.loading import CheckpointError, from_pretrained
from vla_spec.model.modeling import OpenVLA
from vla_spec.model.network import Prefix

__all__ = [
    "CheckpointError",
    "GreedyResult",
    "OpenVLA",
    "OpenVLAConfig",
    "Prefix",
    "from_pretrained",
    "greedy_decode",
]
