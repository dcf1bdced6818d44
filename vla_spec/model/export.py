"""Write a model in the official OpenVLA Hugging Face format (what :func:`from_pretrained` reads).

For checkpoints this project makes: ``golden/tiny-openvla`` (``scripts/make_tiny_checkpoint.py``)
and the trained LIBERO policies (``scripts/train_tiny_vla.py``). Files, as in
``openvla/openvla-7b-finetuned-libero-*``: ``config.json`` (``model_type "openvla"``, ``norm_stats``,
``text_config``, plus the documented ``vla_spec_timm_overrides`` extension that shrinks the towers),
``model.safetensors.index.json`` + two bfloat16 shards, ``preprocessor_config.json``, and a tokenizer
(``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``). Also for
``scripts/make_reference_checkpoint.py``: full-size towers (no overrides) and Llama-2's own
``tokenizer.model`` laid out as the released checkpoints ship it (:func:`write_llama_tokenizer`).

The tokenizer is the project's own word-level tokenizer (:func:`word_tokenizer`), not Llama-2's
(which cannot be redistributed). It keeps the ids that matter to the spec: BOS 1, EOS 2, "▁" 29871,
``<PAD>`` 32000, unknown 0; every other id differs from Llama-2's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from vla_spec.images import MODEL_IMAGE_SIZE
from vla_spec.model.processor import TOWER_NORMALIZATION
from vla_spec.model.config import OVERRIDES_KEY
from vla_spec.prompt import BOS_TOKEN_ID, EOS_TOKEN_ID, SPECIAL_EMPTY_TOKEN_ID, build_prompt

PAD_TOKEN_ID = 32000
UNK_TOKEN_ID = 0
FIRST_WORD_ID = 100  # our word ids start here; unrelated to Llama-2's ids
PADDED_VOCAB_SIZE = 32064  # 32000 + pad_to_multiple_of: the action ids stay the real 31744..31999

PREPROCESSOR_CONFIG: dict[str, Any] = {
    "image_processor_type": "PrismaticImageProcessor",
    "processor_class": "PrismaticProcessor",
    "image_resize_strategy": "resize-naive",
    "input_sizes": [[3, MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE]] * 2,
    "interpolations": ["bicubic", "bicubic"],
    "means": [list(mean) for mean, _ in TOWER_NORMALIZATION],
    "stds": [list(std) for _, std in TOWER_NORMALIZATION],
    "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None, "size": [224, 224]}] * 2,
    "tvf_crop_params": [{"output_size": [224, 224]}] * 2,
    "tvf_normalize_params": [{"inplace": False, "mean": list(m), "std": list(s)} for m, s in TOWER_NORMALIZATION],
    "tvf_do_letterbox": False,
    "tvf_letterbox_fill": None,
    "use_fused_vision_backbone": True,
}


# tokenizer_config.json as the released OpenVLA checkpoints ship it (Llama-2 + <PAD> = 32000).
LLAMA_TOKENIZER_CONFIG: dict[str, Any] = {
    "tokenizer_class": "LlamaTokenizer",
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<PAD>",
    "legacy": False,
    "model_max_length": 2048,
    "padding_side": "right",
    "clean_up_tokenization_spaces": False,
    "added_tokens_decoder": {
        str(PAD_TOKEN_ID): {
            "content": "<PAD>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True
        }
    },
}
LLAMA_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<PAD>"}


def llama_text_config(hidden_size: int, intermediate_size: int, layers: int, heads: int) -> dict[str, Any]:
    """A small Llama ``text_config`` with OpenVLA's padded vocabulary and special ids."""
    return {
        "vocab_size": PADDED_VOCAB_SIZE,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "pad_token_id": PAD_TOKEN_ID,
        "model_type": "llama",
        "torch_dtype": "bfloat16",
    }


def openvla_config(
    text_config: Mapping[str, Any], timm_overrides: list[dict[str, Any]] | None, norm_stats: Mapping[str, Any]
) -> dict[str, Any]:
    """``config.json`` in the official layout; ``norm_stats`` is the raw ``{key: entry}`` mapping;
    ``timm_overrides`` None: the official full-size towers (no ``vla_spec_timm_overrides`` key)."""
    config = {
        "architectures": ["OpenVLAForActionPrediction"],
        "model_type": "openvla",
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive",
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "timm_override_act_layers": [None, None],
        "image_sizes": [224, 224],
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "output_projector_states": False,
        "pad_token_id": PAD_TOKEN_ID,
        "pad_to_multiple_of": 64,
        "llm_max_length": 2048,
        "n_action_bins": 256,
        "norm_stats": dict(norm_stats),
        "text_config": dict(text_config),
        "torch_dtype": "bfloat16",
    }
    if timm_overrides is not None:
        config[OVERRIDES_KEY] = timm_overrides
    return config


def word_tokenizer(instructions: Iterable[str], extra_words: Iterable[str] = ()) -> Any:
    """A word-level tokenizer (``PreTrainedTokenizerFast``) knowing the prompt template, every word
    of ``instructions`` and ``extra_words``; SentencePiece-style "▁" word starts, BOS added first."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = set(extra_words)
    for instruction in instructions:
        words.update(build_prompt(instruction).replace("?", " ").replace(":", " ").split())
    pieces = sorted({"▁" + w for w in words} | {"▁In", "▁What", "Out", "?", ":", "\n", "▁Out"})
    vocab = {"<unk>": UNK_TOKEN_ID, "<s>": BOS_TOKEN_ID, "</s>": EOS_TOKEN_ID, "▁": SPECIAL_EMPTY_TOKEN_ID}
    vocab.update({piece: FIRST_WORD_ID + i for i, piece in enumerate(pieces)})
    vocab["<PAD>"] = PAD_TOKEN_ID
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    # SentencePiece style: spaces become "▁" and start a word; the text gets a leading "▁".
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"▁?[A-Za-z0-9']+|▁|\n|[^\sA-Za-z0-9'▁]"), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_TOKEN_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<PAD>",
        padding_side="right",
        model_max_length=2048,
    )


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, config: Mapping[str, Any], out: Path) -> None:
    """Write ``config``, two bfloat16 shards + index, the tokenizer and ``preprocessor_config.json``."""
    save_weights(model, config, out)
    tokenizer.save_pretrained(str(out))
    # The generic class name, so that transformers 4.x and 5.x both load it with AutoTokenizer.
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")


def save_weights(model: torch.nn.Module, config: Mapping[str, Any], out: Path) -> None:
    """Write ``config``, two bfloat16 shards + index and ``preprocessor_config.json`` (no tokenizer)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    state = {name: tensor.detach().cpu().to(torch.bfloat16).contiguous() for name, tensor in model.state_dict().items()}
    first = {n: t for n, t in state.items() if not n.startswith("language_model.") or "embed_tokens" in n}
    second = {n: t for n, t in state.items() if n not in first}
    shards = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    weight_map = {}
    for file_name, tensors in shards.items():
        save_file(tensors, str(out / file_name), metadata={"format": "pt"})
        weight_map.update({name: file_name for name in tensors})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n", encoding="utf-8")


def write_llama_tokenizer(tokenizer_model: Path, out: Path) -> None:
    """Llama-2's SentencePiece ``tokenizer_model`` in ``out`` as the released checkpoints ship it:
    ``tokenizer.model``, :data:`LLAMA_TOKENIZER_CONFIG` and ``special_tokens_map.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(Path(tokenizer_model).read_bytes())
    (out / "tokenizer_config.json").write_text(json.dumps(LLAMA_TOKENIZER_CONFIG, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(LLAMA_SPECIAL_TOKENS, indent=2) + "\n", encoding="utf-8")
