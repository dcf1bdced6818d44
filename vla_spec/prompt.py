"""The OpenVLA prompt and the token that follows it.

``build_prompt`` gives exactly the LIBERO evaluation's string
``"In: What action should the robot take to {instruction.lower()}?\\nOut:"``.
In training the target was ``prompt + " " + <7 action characters> + "</s>"``; SentencePiece turns
that space into the lone word-start piece ``"▁"`` (id 29871), because the action characters never
merge with it. At inference the prompt ends at ``"Out:"``, so ``predict_action`` appends 29871 when
it is missing, and the first generated token is the first action token.
"""

from __future__ import annotations

from collections.abc import Sequence

SPECIAL_EMPTY_TOKEN_ID = 29871  # SentencePiece "▁" in the Llama-2 vocabulary
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


def build_prompt(instruction: str) -> str:
    """The OpenVLA-7B prompt for a task instruction (lower-cased, as the LIBERO eval does)."""
    if not instruction or not instruction.strip():
        raise ValueError("instruction must be a non-empty task description, e.g. 'put the apple in the bowl'")
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


def with_empty_token(input_ids: Sequence[int]) -> list[int]:
    """``input_ids`` with 29871 appended unless it is already the last id (``predict_action``)."""
    ids = list(input_ids)
    if not ids or ids[-1] != SPECIAL_EMPTY_TOKEN_ID:
        ids.append(SPECIAL_EMPTY_TOKEN_ID)
    return ids
