"""The official OpenVLA ``config.json`` (``model_type: "openvla"``) as a frozen dataclass.

Fields follow ``prismatic/extern/hf/configuration_prismatic.py`` of openvla/openvla (c8f03f4).
``text_config`` is a Llama config whose ``vocab_size`` is the *padded* embedding size
(32000 + ``pad_to_multiple_of`` = 32064); the action tokenizer decodes against
``text_vocab_size`` = ``vocab_size - pad_to_multiple_of`` = 32000, as the reference ``predict_action``.

``text_config`` in the released ``config.json`` may list only what differs from ``LlamaConfig``'s
defaults (transformers serializes nested configs as a diff, e.g. just ``model_type``,
``pad_token_id``, ``torch_dtype``, ``vocab_size``). Missing fields take the defaults of the
reference's transformers (4.40.1) ``LlamaConfig``, pinned in :data:`REFERENCE_LLAMA_DEFAULTS`, so
a change of defaults in a newer transformers cannot change the model silently.

One extension, absent from official configs and ignored by the reference code:
``"vla_spec_timm_overrides"``: a list with one dict per vision tower (DINOv2 first, SigLIP second)
of keyword arguments passed on to ``timm.create_model`` (e.g. ``embed_dim``, ``depth``,
``num_heads``) on top of the official ones. The tiny test checkpoint uses it to shrink the towers
while keeping timm's real architecture (class/register tokens, LayerScale, attention-pool head).
Official configs load unchanged without it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_spec.normalization import NormStats, parse_norm_stats

OVERRIDES_KEY = "vla_spec_timm_overrides"

# vision_backbone_id -> (timm model ids, image size); prismatic/extern/hf/configuration_prismatic.py
VISION_BACKBONES: dict[str, tuple[tuple[str, ...], int]] = {
    "dinosiglip-vit-so-224px": (("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"), 224),
}
SUPPORTED_ARCH = "no-align+fused-gelu-mlp"
# transformers 4.40.1 LlamaConfig defaults (= Llama-2-7B shapes; note rms_norm_eps 1e-6 there).
REFERENCE_LLAMA_DEFAULTS: dict[str, Any] = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


class CheckpointConfigError(ValueError):
    """A ``config.json`` this implementation cannot build a model from."""


@dataclass(frozen=True)
class OpenVLAConfig:
    """What the model needs from ``config.json``. Image size in pixels, square, RGB."""

    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    llm_backbone_id: str = "llama2-7b-pure"
    arch_specifier: str = SUPPORTED_ARCH
    use_fused_vision_backbone: bool = True
    image_resize_strategy: str = "resize-naive"
    pad_token_id: int = 32000
    pad_to_multiple_of: int = 64
    llm_max_length: int = 2048
    n_action_bins: int = 256
    text_config: Mapping[str, Any] = field(default_factory=dict)
    norm_stats: Mapping[str, NormStats] = field(default_factory=dict)
    timm_overrides: tuple[Mapping[str, Any], ...] = ({}, {})
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def timm_model_ids(self) -> tuple[str, ...]:
        """The timm ids of the towers: DINOv2 then SigLIP for the fused backbone."""
        return VISION_BACKBONES[self.vision_backbone_id][0]

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels (224)."""
        return VISION_BACKBONES[self.vision_backbone_id][1]

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding and of ``lm_head`` (32064 for OpenVLA-7B)."""
        return int(self.text_config["vocab_size"])

    @property
    def text_vocab_size(self) -> int:
        """The vocabulary the action tokenizer decodes against (32000): padded size minus padding."""
        return self.vocab_size - self.pad_to_multiple_of

    @property
    def hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    def llama_config(self) -> Any:
        """A ``transformers.LlamaConfig`` built from ``text_config``."""
        from transformers import LlamaConfig

        keys = {k: v for k, v in self.text_config.items() if k not in ("architectures", "model_type", "_name_or_path")}
        if keys.get("num_key_value_heads") is None:
            keys["num_key_value_heads"] = keys["num_attention_heads"]
        return LlamaConfig(**keys)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> "OpenVLAConfig":
        """Validate and parse a config mapping; ``source`` names the file in error messages."""
        if raw.get("model_type") != "openvla":
            raise CheckpointConfigError(f"{source}: model_type must be 'openvla', got {raw.get('model_type')!r}")
        backbone = raw.get("vision_backbone_id", "dinosiglip-vit-so-224px")
        if backbone not in VISION_BACKBONES:
            raise CheckpointConfigError(
                f"{source}: vision_backbone_id {backbone!r} is not supported; supported: {sorted(VISION_BACKBONES)}"
            )
        arch = raw.get("arch_specifier", SUPPORTED_ARCH)
        if arch != SUPPORTED_ARCH:
            raise CheckpointConfigError(f"{source}: arch_specifier {arch!r} is not supported; only {SUPPORTED_ARCH!r}")
        if not raw.get("use_fused_vision_backbone", True):
            raise CheckpointConfigError(f"{source}: use_fused_vision_backbone must be true for {backbone!r}")
        text = raw.get("text_config")
        if not isinstance(text, Mapping) or "vocab_size" not in text:
            raise CheckpointConfigError(f"{source}: text_config must be a Llama config with at least vocab_size")
        overrides = raw.get(OVERRIDES_KEY, [{}, {}])
        if not isinstance(overrides, list) or len(overrides) != 2 or not all(isinstance(o, Mapping) for o in overrides):
            raise CheckpointConfigError(f"{source}: {OVERRIDES_KEY} must be a list of two dicts (DINOv2, SigLIP)")
        return cls(
            vision_backbone_id=backbone,
            llm_backbone_id=raw.get("llm_backbone_id", "llama2-7b-pure"),
            arch_specifier=arch,
            use_fused_vision_backbone=True,
            image_resize_strategy=raw.get("image_resize_strategy", "resize-naive"),
            pad_token_id=int(raw.get("pad_token_id", 32000)),
            pad_to_multiple_of=int(raw.get("pad_to_multiple_of", 64)),
            llm_max_length=int(raw.get("llm_max_length", 2048)),
            n_action_bins=int(raw.get("n_action_bins", 256)),
            text_config={**REFERENCE_LLAMA_DEFAULTS, **text},
            norm_stats=parse_norm_stats(raw.get("norm_stats") or {}),
            timm_overrides=tuple(dict(o) for o in overrides),
            raw=dict(raw),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "OpenVLAConfig":
        """Read ``config.json``."""
        path = Path(path)
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle), source=str(path))

    def with_norm_stats(self, norm_stats: Mapping[str, NormStats]) -> "OpenVLAConfig":
        """A copy with other statistics (``dataset_statistics.json`` overrides ``config.json``)."""
        from dataclasses import replace

        return replace(self, norm_stats=dict(norm_stats))
