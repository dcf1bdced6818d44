"""The checkpoint's text tokenizer and the prompt ids the model is fed.

Real checkpoints ship Llama-2's SentencePiece ``tokenizer.model`` (+ ``tokenizer.json`` /
``tokenizer_config.json``) with ``<PAD>`` added as id 32000 (``len(tokenizer) == 32001``). The tiny
test checkpoint ships its own small ``tokenizer.json`` (see ``scripts/make_tiny_checkpoint.py``):
same BOS = 1, EOS = 2, ``<PAD>`` = 32000 and 29871 = the word-start piece, but otherwise its ids
differ from Llama-2's. Both load through ``transformers.AutoTokenizer`` from the checkpoint folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vla_spec.prompt import BOS_TOKEN_ID, build_prompt, with_empty_token

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class MissingTokenizerError(FileNotFoundError):
    """A checkpoint folder without tokenizer files."""


def require_tokenizer_files(folder: Path) -> None:
    """Raise :class:`MissingTokenizerError` unless ``folder`` holds one of :data:`TOKENIZER_FILES`."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise MissingTokenizerError(
            f"{folder} has no tokenizer: expected one of {', '.join(TOKENIZER_FILES)} (with tokenizer_config.json); "
            "copy the tokenizer files of the checkpoint into this folder"
        )


def load_tokenizer(checkpoint_dir: str | Path) -> Any:
    """Load the tokenizer stored beside the weights (``tokenizer.json`` or ``tokenizer.model``)."""
    from transformers import AutoTokenizer, PretrainedConfig

    folder = Path(checkpoint_dir)
    require_tokenizer_files(folder)
    # config.json says model_type "openvla", unknown to transformers: when tokenizer_config.json
    # names the tokenizer class, a blank config keeps AutoTokenizer from reading (and warning about) it.
    tokenizer_config = folder / "tokenizer_config.json"
    declared = tokenizer_config.is_file() and "tokenizer_class" in json.loads(tokenizer_config.read_text(encoding="utf-8"))
    return AutoTokenizer.from_pretrained(str(folder), **({"config": PretrainedConfig()} if declared else {}))


def prompt_ids(tokenizer: Any, instruction: str) -> list[int]:
    """Model input ids for ``instruction``: BOS + prompt tokens + 29871 (via ``with_empty_token``)."""
    ids = list(tokenizer(build_prompt(instruction), add_special_tokens=True)["input_ids"])
    if not ids or ids[0] != BOS_TOKEN_ID:
        raise ValueError(f"the tokenizer must add BOS (id {BOS_TOKEN_ID}) first; got ids starting {ids[:3]}")
    return with_empty_token(ids)
