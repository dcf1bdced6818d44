"""The prompt string, the 29871 rule and where 29871 comes from (facts §1 "Training target", §2, §3).

The tokenizer tests need the real Llama-2 ``tokenizer.model`` (``--llama-tokenizer`` or
``VLA_SPEC_LLAMA_TOKENIZER``) and skip without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vla_spec.prompt import BOS_TOKEN_ID, SPECIAL_EMPTY_TOKEN_ID, build_prompt, with_empty_token

pytestmark = pytest.mark.cpu

APPLE = "In: What action should the robot take to put the apple in the bowl?\nOut:"
ACTION_IDS = [31872, 31880, 31900, 31744, 31999, 31800, 31850]


@pytest.fixture(scope="module")
def sp(llama_tokenizer_path: Path):  # type: ignore[no-untyped-def]
    sentencepiece = pytest.importorskip("sentencepiece", reason="pip install sentencepiece")
    return sentencepiece.SentencePieceProcessor(model_file=str(llama_tokenizer_path))


def test_exact_template() -> None:
    assert build_prompt("put the apple in the bowl") == APPLE


def test_instruction_is_lower_cased() -> None:
    assert build_prompt("Put The Apple In The BOWL") == APPLE


@pytest.mark.parametrize("instruction", ["", "   ", "\n"])
def test_empty_instruction_is_an_error(instruction: str) -> None:
    with pytest.raises(ValueError, match="non-empty task description"):
        build_prompt(instruction)


def test_with_empty_token_appends_29871_only_when_missing() -> None:
    assert SPECIAL_EMPTY_TOKEN_ID == 29871
    assert with_empty_token([1, 3744, 29901]) == [1, 3744, 29901, 29871]
    assert with_empty_token([1, 3744, 29901, 29871]) == [1, 3744, 29901, 29871]
    assert with_empty_token([]) == [29871]
    ids = (1, 2)
    assert with_empty_token(ids) == [1, 2, 29871] and ids == (1, 2)  # input left alone


def test_prompt_is_21_ids_with_bos(sp) -> None:  # type: ignore[no-untyped-def]
    ids = sp.encode(APPLE, add_bos=True)
    assert len(ids) == 21 and ids[0] == BOS_TOKEN_ID == sp.bos_id() and ids.count(1) == 1
    assert [sp.id_to_piece(i) for i in ids[-3:]] == ["<0x0A>", "Out", ":"]  # ends without the blank


def test_29871_is_the_lone_word_start_piece(sp) -> None:  # type: ignore[no-untyped-def]
    assert sp.id_to_piece(29871) == "\u2581"


def test_29871_is_the_space_between_prompt_and_actions_in_training(sp) -> None:  # type: ignore[no-untyped-def]
    """Training tokenized ``prompt + " " + <7 action chars>``: the space becomes its own piece."""
    action_chars = "".join(sp.id_to_piece(i) for i in ACTION_IDS)
    ids = sp.encode(APPLE + " " + action_chars, add_bos=True)
    prompt_ids = sp.encode(APPLE, add_bos=True)
    assert ids == prompt_ids + [29871] + ACTION_IDS
    # and no action character ever merges with the blank before it
    for token_id in range(31744, 32000):
        assert sp.encode(APPLE + " " + sp.id_to_piece(token_id), add_bos=True) == prompt_ids + [29871, token_id]


def test_predict_action_input_matches_training_prefix(sp) -> None:  # type: ignore[no-untyped-def]
    training = sp.encode(APPLE + " " + "".join(sp.id_to_piece(i) for i in ACTION_IDS), add_bos=True)
    assert with_empty_token(sp.encode(APPLE, add_bos=True)) == training[: -len(ACTION_IDS)]


def test_action_ids_are_the_last_256_pieces_single_non_ascii_characters(sp) -> None:  # type: ignore[no-untyped-def]
    assert sp.get_piece_size() == 32000
    pieces = [sp.id_to_piece(i) for i in range(31744, 32000)]
    assert all(len(piece) == 1 and ord(piece) > 127 for piece in pieces), pieces


def test_action_ids_have_the_lowest_merge_scores(sp) -> None:  # type: ignore[no-untyped-def]
    """"Least used": excluding the whitespace-run pieces (score -1e9), the scores fall with the id,
    so the 256 action ids carry the 256 lowest scores of the vocabulary."""
    scores = {i: sp.get_score(i) for i in range(3, 32000) if not sp.is_byte(i) and sp.get_score(i) > -1e9}
    lowest = sorted(scores, key=scores.__getitem__)[:256]
    assert sorted(lowest) == list(range(31744, 32000))
