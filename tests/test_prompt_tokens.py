"""The prompt as token ids: BOS + prompt + 29871, with the real Llama-2 tokenizer and with ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from vla_spec.model.tokenizer import load_tokenizer, prompt_ids
from vla_spec.prompt import BOS_TOKEN_ID, SPECIAL_EMPTY_TOKEN_ID, build_prompt

INSTRUCTION = "put the apple in the bowl"


@pytest.fixture(scope="module")
def real_tokenizer(llama_tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """Llama-2's tokenizer.model laid out as in a real OpenVLA checkpoint folder, loaded by our loader."""
    from vla_spec.model.export import write_llama_tokenizer  # imports torch: not at collection (conftest.TORCH_TESTS)

    source = llama_tokenizer_path / "tokenizer.model" if llama_tokenizer_path.is_dir() else llama_tokenizer_path
    folder = tmp_path_factory.mktemp("openvla-tokenizer")
    write_llama_tokenizer(source, folder)
    return load_tokenizer(folder)


@pytest.mark.cpu
def test_real_prompt_is_21_ids_then_29871(real_tokenizer):
    raw = list(real_tokenizer(build_prompt(INSTRUCTION))["input_ids"])
    assert len(raw) == 21 and raw[0] == BOS_TOKEN_ID and raw[-1] != SPECIAL_EMPTY_TOKEN_ID
    assert prompt_ids(real_tokenizer, INSTRUCTION) == raw + [SPECIAL_EMPTY_TOKEN_ID]


@pytest.mark.cpu
def test_real_tokenizer_has_pad_32000_and_llama2_action_range(real_tokenizer):
    assert real_tokenizer.convert_tokens_to_ids("<PAD>") == 32000 and real_tokenizer.pad_token_id == 32000
    assert len(real_tokenizer) == 32001
    assert real_tokenizer.convert_ids_to_tokens(SPECIAL_EMPTY_TOKEN_ID) == "▁"
    assert real_tokenizer.vocab_size == 32000  # action ids 31744..31999 are its last 256 pieces


@pytest.mark.cpu
@pytest.mark.parametrize("checkpoint", ["tiny-openvla", "tiny-vla-libero-object"])
def test_project_tokenizers_keep_the_special_ids(checkpoint):
    """Our tokenizers are not Llama-2's, but unk, BOS, EOS, "▁" (29871) and <PAD> have Llama-2's ids
    in the vocabulary itself (prompt_ids appends 29871 whatever the tokenizer says)."""
    from vla_spec.model.tiny import resolve_checkpoint

    tokenizer = load_tokenizer(resolve_checkpoint(checkpoint))
    pieces = {"<unk>": 0, "<s>": BOS_TOKEN_ID, "</s>": 2, "▁": SPECIAL_EMPTY_TOKEN_ID, "<PAD>": 32000}
    assert {piece: tokenizer.convert_tokens_to_ids(piece) for piece in pieces} == pieces
    assert tokenizer("zyzzyva", add_special_tokens=False)["input_ids"] == [0]  # unknown word -> <unk>
    ids = prompt_ids(tokenizer, INSTRUCTION)
    assert ids[0] == BOS_TOKEN_ID and ids[-1] == SPECIAL_EMPTY_TOKEN_ID
    assert ids.count(SPECIAL_EMPTY_TOKEN_ID) == 1  # appended exactly once
    assert tokenizer.convert_tokens_to_ids("<PAD>") == 32000
    assert prompt_ids(tokenizer, INSTRUCTION) != prompt_ids(tokenizer, "put the bowl on the stove")
    assert prompt_ids(tokenizer, "Put The Apple In The Bowl") == ids  # build_prompt lower-cases


@pytest.mark.cpu
def test_tokenizer_without_bos_is_refused():
    class NoBos:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [5, 6, 7]}

    with pytest.raises(ValueError, match="must add BOS"):
        prompt_ids(NoBos(), INSTRUCTION)
