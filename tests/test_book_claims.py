"""The book's worked example as an executable page, and four of its sentences checked against the code.

The page: the policy ``openvla-7b-finetuned-libero-object`` emits the seven action tokens
``[31882, 31894, 31881, 31905, 31888, 31875, 31999]``. We decode them step by step the way the
reference ``predict_action`` does (facts §1-§2) under the ``libero_object`` statistics (facts §4)
and say what the robot is told to do (facts §3: OSC_POSE input 1.0 = 0.05 m / 0.5 rad per step;
gripper post-processing). Every expected number here is computed in the test from the facts'
formulas and constants, never read back from our own library.

Then one test per sentence of the book; each name says the claim and the verdict:
``..._confirmed`` or ``..._refuted``. Each calls the project's code; the one test that is only
arithmetic on the book's numbers (where a figure comes from) is marked ``documentation``.
"""

from __future__ import annotations

import numpy as np
import pytest

from vla_spec.gripper import ENV_CLOSE, policy_to_env
from vla_spec.normalization import NormStats, normalize, shipped_norm_stats, unnormalize
from vla_spec.resolution import axis_resolutions
from vla_spec.tokens import ActionTokenizer

pytestmark = pytest.mark.cpu

TOKENS = np.array([31882, 31894, 31881, 31905, 31888, 31875, 31999])
TOK = ActionTokenizer()
# libero_object, facts §4
Q01 = np.array([-0.5383928418159485, -0.8758928775787354, -0.9375, -0.06964285671710968, -0.11678571254014969, -0.15964286029338837, 0])
Q99 = np.array([0.8464285731315613, 0.84375, 0.9375, 0.08142857253551483, 0.14892856776714325, 0.0867857113480568, 1])
MIN = np.array([-0.8839285969734192, -0.9375, -0.9375, -0.15000000596046448, -0.29035714268684387, -0.32892856001853943, 0])
MAX = np.array([0.9375, 0.8919642567634583, 0.9375, 0.17678570747375488, 0.35035714507102966, 0.1810714304447174, 1])
MASK = np.array([True] * 6 + [False])
OSC_POSE = np.array([0.05] * 3 + [0.5] * 3)  # m, m, m, rad, rad, rad per unit of controller input


def reference_unnormalize(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``predict_action``: where(mask, 0.5 (x + 1)(high - low) + low, x)."""
    return np.where(MASK, 0.5 * (x + 1) * (high - low) + low, x)


@pytest.fixture(scope="module")
def stats():  # type: ignore[no-untyped-def]
    return shipped_norm_stats()["libero_object"]


# --- the worked example -------------------------------------------------------------------------


def test_steps_1_2_tokens_decode_to_bin_centres() -> None:
    """Token id t is bin k = 31999 - t from the top: k = 117, 105, 118, 94, 111, 124, 0; its centre
    c_k = -1 + (2k + 1)/255 (facts §1) is -20/255, -44/255, -18/255, -66/255, -32/255, -6/255, -254/255."""
    np.testing.assert_allclose(TOK.decode(TOKENS), np.array([-20, -44, -18, -66, -32, -6, -254]) / 255, atol=1e-15)


def test_step3_unnormalized_action_under_libero_object(stats) -> None:  # type: ignore[no-untyped-def]
    x = np.array([-20, -44, -18, -66, -32, -6, -254]) / 255
    expected = reference_unnormalize(x, Q01, Q99)
    action = unnormalize(TOK.decode(TOKENS), stats)
    np.testing.assert_allclose(action, expected, rtol=1e-14, atol=1e-15)
    # the page prints it to 4 significant digits
    printed = [0.09971, -0.1644, -0.06618, -0.01366, -0.0006008, -0.03933, -0.9961]
    np.testing.assert_allclose(action, printed, rtol=5e-4)


def test_step4_meaning_small_moves_per_step_and_close_the_gripper(stats) -> None:  # type: ignore[no-untyped-def]
    """Per 20 Hz step: +5.0 mm x, -8.2 mm y, -3.3 mm z; -6.8, -0.3, -19.7 mrad roll, pitch, yaw.

    The gripper stays the raw centre -0.996 (not normalized): 2(-0.996) - 1 < 0, sign -1,
    inverted to +1: the environment closes the gripper.
    """
    action = unnormalize(TOK.decode(TOKENS), stats)
    physical = action[:6] * OSC_POSE
    np.testing.assert_allclose(physical[:3] * 1000, [4.986, -8.222, -3.309], atol=5e-3)  # mm
    np.testing.assert_allclose(physical[3:] * 1000, [-6.829, -0.300, -19.664], atol=5e-3)  # mrad
    assert np.all(np.abs(physical[:3]) < 0.01)  # all translations under 1 cm per step
    assert np.sign(physical).tolist() == [1, -1, -1, -1, -1, -1]
    assert action[6] == pytest.approx(-0.996078, abs=5e-7)
    assert policy_to_env(action)[6] == ENV_CLOSE == 1.0


# --- the book's sentences -----------------------------------------------------------------------


def test_claim_action_tokens_are_the_bottom_256_vocabulary_entries_refuted() -> None:
    """Refuted: they are the *last* (highest) 256 ids of the 32000-id Llama-2 vocabulary,
    31744..31999 (the paper: "the last 256 tokens"); ids 0..255 are never emitted."""
    every_bin = TOK.encode(np.linspace(-1.2, 1.2, 20001))
    assert set(every_bin.tolist()) == set(range(32000 - 256, 32000)) == set(range(31744, 32000))
    assert every_bin.min() > 255


def test_claim_bin_index_is_in_0_to_255_refuted_by_the_code() -> None:
    """The paper says 256 bins with integers in [0..255]. The code's digitize index d = 32000 - id
    is 1..256 (256 values), and decoding clips d - 1 to 0..254: only 255 distinct values."""
    d = 32000 - TOK.encode(np.linspace(-1.2, 1.2, 20001))
    assert (d.min(), d.max(), len(set(d.tolist()))) == (1, 256, 256)
    decoded = TOK.decode(np.arange(31744, 32000))
    assert len(set(decoded.tolist())) == 255


def test_claim_each_axis_normalized_by_its_min_and_max_refuted(stats) -> None:  # type: ignore[no-untyped-def]
    """Refuted: BOUNDS_Q99 uses the 1st and 99th percentiles. Under libero_object they differ from
    min/max on 5 of 6 arm axes (z's are both the command limit 0.9375), and decoding the page's
    tokens with min/max instead turns the x move from +0.0997 into -0.0446 (the opposite way)."""
    assert stats.q01.tolist() == Q01.tolist() and stats.min.tolist() == MIN.tolist()
    differs = (Q01 != MIN) | (Q99 != MAX)
    assert differs[:6].tolist() == [True, True, False, True, True, True]
    x = TOK.decode(TOKENS)
    with_quantiles, with_min_max = reference_unnormalize(x, Q01, Q99), reference_unnormalize(x, MIN, MAX)
    assert with_quantiles[0] == pytest.approx(0.0997, abs=1e-4)
    assert with_min_max[0] == pytest.approx(-0.0446, abs=1e-4)
    assert unnormalize(x, stats).tolist() == with_quantiles.tolist()
    # the encoder agrees: a zero action lands on the facts' digitize indices only with q01/q99
    assert (32000 - TOK.encode(normalize(np.zeros(7), stats))[:6]).tolist() == [100, 130, 128, 118, 113, 166]


def test_claim_bins_give_0_78_mm_resolution_refuted(stats) -> None:  # type: ignore[no-untyped-def]
    """Refuted. The step between decodable values is (q99 - q01)/255 per axis, i.e. under
    libero_object with OSC_POSE 0.05 m per unit: 0.272, 0.337, 0.368 mm for x, y, z. Even the
    widest span possible (the whole controller input [-1, 1], 0.1 m) gives 0.1 m / 255 = 0.392 mm.

    Where 0.78 mm can come from: 2/256 = 0.0078 (the bin width in [-1, 1] with 256 bins) times
    0.1 m (the full ±0.05 m travel) is 0.78 mm. But one unit of controller input is 0.05 m, not
    0.1 m, so even that width is 0.39 mm; the real q01..q99 spans are narrower still.
    """
    step_mm = np.array([row.physical for row in axis_resolutions(stats)[:3]]) * 1000
    np.testing.assert_allclose(step_mm, [0.2715, 0.3372, 0.3676], atol=1e-4)
    assert np.all(step_mm < 0.78 / 2)
    widest = NormStats("whole controller range", q01=np.full(7, -1.0), q99=np.ones(7), mask=MASK)
    assert axis_resolutions(widest)[0].physical * 1000 == pytest.approx(0.392, abs=1e-3)


@pytest.mark.documentation
def test_where_0_78_mm_comes_from() -> None:
    """Arithmetic on the book's numbers, no project code: the 256-bin width 2/256 in [-1, 1] times
    the full +-0.05 m travel (0.1 m) is 0.78 mm; one unit of controller input is 0.05 m, so 0.39 mm."""
    assert 2 / 256 * 0.1 * 1000 == pytest.approx(0.78, abs=0.005)
    assert 2 / 256 * 0.05 * 1000 == pytest.approx(0.39, abs=0.005)
