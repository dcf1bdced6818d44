"""The action tokenizer against the reference ``action_tokenizer.py`` (facts §1).

Expected values come from the facts: the worked table, c_k = -1 + (2k + 1)/255, ids 31744..31999.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vla_spec.tokens import ActionTokenizer

pytestmark = pytest.mark.cpu

FAST = settings(max_examples=60, deadline=None)
TOK = ActionTokenizer()
FIRST_ID, LAST_ID = 31744, 31999
HALF_BIN = 1 / 255  # largest round-trip error in normalized units (facts §1)


def centre(k: int) -> float:
    """Bin centre k in normalized units, from the facts' closed form."""
    return -1 + (2 * k + 1) / 255


@pytest.mark.parametrize(
    ("action", "token_id", "decoded"),
    [
        (0.0, 31872, 0.0),
        (0.5, 31808, 0.50196),
        (1.0, 31744, 0.996078),
        (1.5, 31744, 0.996078),
        (-1.0, 31999, -0.996078),
        (-2.0, 31999, -0.996078),
    ],
)
def test_worked_table(action: float, token_id: int, decoded: float) -> None:
    assert TOK.encode(np.array(action)) == token_id
    assert TOK.decode(np.array(token_id)) == pytest.approx(decoded, abs=5e-6)


def test_256_edges_spaced_2_over_255() -> None:
    assert TOK.bin_edges.shape == (256,)
    assert TOK.bin_edges[0] == -1.0 and TOK.bin_edges[-1] == 1.0
    np.testing.assert_allclose(np.diff(TOK.bin_edges), 2 / 255, rtol=1e-12)


def test_255_centres_follow_closed_form() -> None:
    assert TOK.bin_centers.shape == (255,)
    np.testing.assert_allclose(TOK.bin_centers, [centre(k) for k in range(255)], atol=1e-15)
    assert TOK.bin_centers[0] == pytest.approx(-0.996078, abs=5e-7)
    assert TOK.bin_centers[127] == 0.0  # exactly, not approximately
    assert TOK.bin_centers[254] == pytest.approx(0.996078, abs=5e-7)


def test_action_id_range_and_begin_idx() -> None:
    assert (TOK.first_action_id, TOK.last_action_id) == (FIRST_ID, LAST_ID)
    assert TOK.action_token_begin_idx == 31743 == 32000 - (256 + 1)
    mask = TOK.is_action_id(np.array([31743, 31744, 31999, 32000]))
    assert mask.tolist() == [False, True, True, False]


def test_top_two_ids_share_the_top_centre() -> None:
    # digitize gives 256 values for 255 centres: d = 1 and d = 2 both land on c_254.
    assert TOK.decode(np.array([31744, 31745])).tolist() == [centre(254)] * 2
    assert TOK.decode(np.array(31746)) == pytest.approx(centre(253), abs=1e-15)


@pytest.mark.parametrize("token_id", [0, 1, 29871, 31743])
def test_ids_below_action_range_decode_to_top_centre(token_id: int) -> None:
    assert TOK.decode(np.array(token_id)) == pytest.approx(0.996078, abs=5e-7)


@pytest.mark.parametrize("token_id", [32000, 32063, 10**6])  # 32000 is <PAD>
def test_ids_above_action_range_decode_to_bottom_centre(token_id: int) -> None:
    assert TOK.decode(np.array(token_id)) == pytest.approx(-0.996078, abs=5e-7)


def test_any_batch_shape_is_kept() -> None:
    actions = np.linspace(-1, 1, 2 * 3 * 7).reshape(2, 3, 7)
    ids = TOK.encode(actions)
    assert ids.shape == (2, 3, 7) and ids.dtype == np.int64
    assert TOK.decode(ids).shape == (2, 3, 7)
    assert TOK.encode([[0.0] * 7]).tolist() == [[31872] * 7]  # nested lists work too


@pytest.mark.parametrize("ids", [np.array([31872.0]), [31872.0, 31873.0], np.array([True])])
def test_decode_rejects_non_integer_ids(ids: object) -> None:
    with pytest.raises(TypeError, match="token ids must be integers"):
        TOK.decode(ids)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed (pip install torch)")
def test_torch_in_torch_out_same_device() -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for dtype in (torch.float32, torch.bfloat16):  # bf16 has no numpy dtype: must still work
        actions = torch.tensor([[0.0, 0.5, 1.0], [1.5, -1.0, -2.0]], dtype=dtype, device=device, requires_grad=True)
        ids = TOK.encode(actions)
        assert isinstance(ids, torch.Tensor) and ids.device == actions.device and ids.dtype == torch.int64
        assert ids.cpu().tolist() == [[31872, 31808, 31744], [31744, 31999, 31999]]
    decoded = TOK.decode(ids)
    assert isinstance(decoded, torch.Tensor) and decoded.device == ids.device and decoded.shape == (2, 3)
    assert decoded[0, 0].item() == 0.0
    with pytest.raises(TypeError, match="integers"):
        TOK.decode(ids.float())


finite_actions = hnp.arrays(np.float64, st.integers(1, 16), elements=st.floats(-1, 1))
any_floats = hnp.arrays(
    np.float64, st.integers(1, 16), elements=st.floats(allow_nan=False, allow_infinity=True, width=64)
)


@FAST
@given(finite_actions)
def test_round_trip_error_at_most_half_a_bin(actions: np.ndarray) -> None:
    error = np.abs(TOK.decode(TOK.encode(actions)) - actions)
    assert np.all(error <= HALF_BIN + 1e-12)


@FAST
@given(any_floats)
def test_encode_is_monotonic_non_increasing(actions: np.ndarray) -> None:
    ordered = np.sort(actions)
    assert np.all(np.diff(TOK.encode(ordered)) <= 0)


@FAST
@given(any_floats)
def test_values_outside_range_encode_like_their_clipped_value(actions: np.ndarray) -> None:
    assert np.array_equal(TOK.encode(actions), TOK.encode(np.clip(actions, -1, 1)))


@FAST
@given(any_floats)
def test_every_float_encodes_inside_action_range(actions: np.ndarray) -> None:
    ids = TOK.encode(actions)
    assert np.all((ids >= FIRST_ID) & (ids <= LAST_ID))


@FAST
@given(st.integers(0, 254))
def test_decode_encode_is_identity_on_centres(k: int) -> None:
    c = TOK.bin_centers[k]
    assert TOK.decode(TOK.encode(np.array(c))) == c
    assert TOK.encode(TOK.decode(TOK.encode(np.array(c)))) == TOK.encode(np.array(c))


def test_infinities_and_nan() -> None:
    # +-inf clip to +-1. NaN survives clip, and np.digitize sorts NaN after every edge, so it
    # returns len(edges) = 256 and NaN encodes to the *top* id 31744 (decoded: +0.996), the same
    # as the reference would give: NaN silently becomes "maximum positive action".
    assert TOK.encode(np.array([np.inf, -np.inf])).tolist() == [31744, 31999]
    assert TOK.encode(np.array([np.nan])).tolist() == [31744]
