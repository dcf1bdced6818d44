"""Norm stats, BOUNDS_Q99 normalization and ``predict_action``'s un-normalization (facts §2, §3, §4).

``FACTS`` below is facts §4 typed in: the shipped JSON must match it field by field.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_spec.normalization import (
    NormStats,
    UnnormKeyError,
    dataset_statistics,
    libero_unnorm_key,
    load_norm_stats,
    normalize,
    parse_norm_stats,
    resolve_unnorm_key,
    shipped_norm_stats,
    unnormalize,
)
from vla_spec.tokens import ActionTokenizer

pytestmark = pytest.mark.cpu

FAST = settings(max_examples=60, deadline=None)
TOK = ActionTokenizer()
LIBERO_KEYS = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
MASK = [True] * 6 + [False]

# fmt: off
FACTS: dict[str, dict[str, object]] = {
    "libero_spatial": {
        "num_trajectories": 432, "num_transitions": 52970,
        "q01": [-0.7454732114076613, -0.6616071462631226, -0.9375, -0.1071428582072258, -0.20678570866584778, -0.1842857152223587, 0.0],
        "q99": [0.9375, 0.8758928775787354, 0.9321428537368774, 0.1039285734295845, 0.17678570747375488, 0.14571428298950195, 1.0],
        "min": [-0.9375, -0.9375, -0.9375, -0.1875, -0.3675000071525574, -0.36000001430511475, 0],
        "max": [0.9375, 0.9375, 0.9375, 0.1971428543329239, 0.33642858266830444, 0.375, 1],
        "mean": [0.15312479436397552, 0.13707277178764343, -0.15526802837848663, -0.005176450591534376, -0.01120874285697937, -0.020194264128804207, 0.4578818082809448],
        "std": [0.41272708773612976, 0.34724321961402893, 0.50869220495224, 0.037266165018081665, 0.07244449853897095, 0.05762382969260216, 0.49827873706817627],
    },
    "libero_object": {
        "num_trajectories": 454, "num_transitions": 66984,
        "q01": [-0.5383928418159485, -0.8758928775787354, -0.9375, -0.06964285671710968, -0.11678571254014969, -0.15964286029338837, 0],
        "q99": [0.8464285731315613, 0.84375, 0.9375, 0.08142857253551483, 0.14892856776714325, 0.0867857113480568, 1],
        "min": [-0.8839285969734192, -0.9375, -0.9375, -0.15000000596046448, -0.29035714268684387, -0.32892856001853943, 0],
        "max": [0.9375, 0.8919642567634583, 0.9375, 0.17678570747375488, 0.35035714507102966, 0.1810714304447174, 1],
        "mean": [0.07096529006958008, 0.13498851656913757, -0.04601382836699486, 0.00123520044144243, 0.006998839322477579, -0.015027612447738647, 0.46428999304771423],
        "std": [0.2681235373020172, 0.43846824765205383, 0.4474974274635315, 0.024446550756692886, 0.049355510622262955, 0.042107198387384415, 0.49879148602485657],
    },
    "libero_goal": {
        "num_trajectories": 428, "num_transitions": 52042,
        "q01": [-0.8785714507102966, -0.7553571462631226, -0.9375, -0.1510714292526245, -0.1639285683631897, -0.13777500048279764, 0],
        "q99": [0.9375, 0.9107142686843872, 0.9375, 0.20357142388820648, 0.26357144117355347, 0.375, 1],
        "min": [-0.9375, -0.9375, -0.9375, -0.2582142949104309, -0.375, -0.2871428430080414, 0],
        "max": [0.9375, 0.9375, 0.9375, 0.3557142913341522, 0.375, 0.375, 1],
        "mean": [0.04721052572131157, 0.028835246339440346, -0.1485840231180191, -0.0025010062381625175, 0.026408178731799126, 0.027379808947443962, 0.6299911737442017],
        "std": [0.3968801498413086, 0.3473387360572815, 0.49239858984947205, 0.055331431329250336, 0.07844757288694382, 0.10008802264928818, 0.48270025849342346],
    },
    "libero_10": {
        "num_trajectories": 379, "num_transitions": 101469,
        "q01": [-0.6348214149475098, -0.7741071581840515, -0.7633928656578064, -0.09749999642372131, -0.14819999992847435, -0.2742857038974762, 0],
        "q99": [0.7714285850524902, 0.8464285731315613, 0.9375, 0.13928571343421936, 0.15964286029338837, 0.3246428668498993, 1],
        "min": [-0.9375, -0.9375, -0.9375, -0.23642857372760773, -0.3053571283817291, -0.3675000071525574, 0],
        "max": [0.9375, 0.9375, 0.9375, 0.30000001192092896, 0.29357144236564636, 0.375, 1],
        "mean": [0.01820324920117855, 0.05858374014496803, -0.05592384561896324, 0.004626928828656673, 0.00289608770981431, -0.007673131301999092, 0.5457824468612671],
        "std": [0.2825464606285095, 0.35904666781425476, 0.3673802614212036, 0.03770702704787254, 0.05429719388484955, 0.08725254982709885, 0.49815231561660767],
    },
    "bridge_orig": {
        "num_trajectories": 60064,
        "q01": [-0.02872725307941437, -0.04170349963009357, -0.026093858778476715, -0.08092105075716972, -0.09288699507713317, -0.20718276381492615, 0],
        "q99": [0.028309678435325586, 0.040855254605412394, 0.040161586627364146, 0.08192047759890528, 0.07792850524187081, 0.20382574498653397, 1],
        "min": [-0.4007510244846344, -0.13874775171279907, -0.22553899884223938, -3.2010786533355713, -1.8618112802505493, -6.279075622558594, 0],
        "max": [0.41691166162490845, 0.25864794850349426, 0.21218234300613403, 3.122201919555664, 1.8618112802505493, 6.280478477478027, 1],
        "mean": [0.0002334194869035855, 0.00013004911306779832, -0.00012762474943883717, -0.0001556558854645118, -0.0004039328487124294, 0.00023557482927571982, 0.5764579176902771],
        "std": [0.009765930473804474, 0.013689135201275349, 0.012667362578213215, 0.028534092009067535, 0.030637972056865692, 0.07691419124603271, 0.4973701536655426],
    },
    "fractal20220817_data": {
        "num_trajectories": 87212, "num_transitions": 3786400,
        "q01": [-0.22453527510166169, -0.14820013284683228, -0.231589707583189, -0.3517994859814644, -0.4193011274933815, -0.43643461108207704, 0],
        "q99": [0.17824687153100965, 0.14938379630446405, 0.21842354819178575, 0.5892666035890578, 0.35272657424211445, 0.44796681255102094, 1],
        "min": [-2.0204520225524902, -5.497899532318115, -2.031663417816162, -1.569917917251587, -1.569892168045044, -1.570419430732727, 0],
        "max": [2.9984593391418457, 22.09052848815918, 2.7507524490356445, 1.570636510848999, 1.5321086645126343, 1.5691522359848022, 1],
        "mean": [0.006987582892179489, 0.006265917327255011, -0.01262515690177679, 0.04333311319351196, -0.005756212864071131, 0.0009130256366916001, 0.5354204773902893],
        "std": [0.0692116990685463, 0.05970962345600128, 0.07353084534406662, 0.15610496699810028, 0.13164450228214264, 0.14593800902366638, 0.497110515832901],
    },
}
# fmt: on

# facts §4 "Derived test vectors": digitize indices of a zero action, per LIBERO suite (6 dims).
ZERO_ACTION_DIGITIZE = {
    "libero_spatial": [113, 110, 128, 130, 138, 143],
    "libero_goal": [124, 116, 128, 109, 98, 69],
    "libero_object": [100, 130, 128, 118, 113, 166],
    "libero_10": [116, 122, 115, 105, 123, 117],
}
ISSUE_346_ACTION = [0.096, 0.1071, -0.0027, -0.0016, -0.015, -0.0193, 0.0]  # printed to 4 decimals


def make_stats(q01: list[float], q99: list[float], **extra: object) -> NormStats:
    entry = {"action": {"q01": q01, "q99": q99, **extra}}
    return NormStats.from_entry("toy", entry)


def test_registry_has_exactly_the_six_shipped_keys() -> None:
    assert set(shipped_norm_stats()) == set(FACTS)


@pytest.mark.parametrize("key", sorted(FACTS))
def test_shipped_stats_match_the_facts(key: str) -> None:
    stats, facts = shipped_norm_stats()[key], FACTS[key]
    for name in ("q01", "q99", "min", "max", "mean", "std"):
        assert getattr(stats, name).tolist() == [float(v) for v in facts[name]], name
    assert stats.mask.tolist() == MASK
    assert stats.num_trajectories == facts["num_trajectories"]
    assert stats.num_transitions == facts.get("num_transitions")
    assert stats.action_dim == 7


@pytest.mark.parametrize("key", LIBERO_KEYS)
def test_libero_stats_carry_seven_dim_zero_proprio(key: str) -> None:
    proprio = shipped_norm_stats()[key].proprio
    assert proprio is not None and set(proprio) == {"mean", "std", "max", "min", "q01", "q99"}
    assert all(values.tolist() == [0.0] * 7 for values in proprio.values())


@pytest.mark.parametrize("key", sorted(ZERO_ACTION_DIGITIZE))
def test_zero_action_token_ids_per_suite(key: str) -> None:
    normalized = normalize(np.zeros(7), shipped_norm_stats()[key])
    ids = TOK.encode(normalized)
    assert (32000 - ids[:6]).tolist() == ZERO_ACTION_DIGITIZE[key]
    assert ids[6] == 31872  # the unmasked gripper 0.0 passes through and encodes as 0.0


def test_zero_action_ids_spatial() -> None:
    ids = TOK.encode(normalize(np.zeros(7), shipped_norm_stats()["libero_spatial"]))
    assert ids[:6].tolist() == [31887, 31890, 31872, 31870, 31862, 31857]


def test_issue_346_output_is_the_midpoint_of_q01_q99() -> None:
    stats = shipped_norm_stats()["libero_spatial"]
    action = unnormalize(TOK.decode(np.full(7, 31872)), stats)
    np.testing.assert_allclose(action, ISSUE_346_ACTION, atol=5e-5)
    facts = FACTS["libero_spatial"]
    midpoint = (np.array(facts["q01"][:6]) + np.array(facts["q99"][:6])) / 2
    np.testing.assert_allclose(action[:6], midpoint, rtol=1e-15)
    assert action[6] == 0.0  # gripper: raw centre c_127, not (0 + 1)/2


def test_unnormalize_formula_and_mask() -> None:
    stats = make_stats([-1.0, 0.0, 2.0], [3.0, 1.0, 4.0], mask=[True, False, True])
    x = np.array([[-1.0, -1.0, -1.0], [1.0, 0.25, 1.0], [0.0, 0.7, 0.5]])
    expected = np.array([[-1.0, -1.0, 2.0], [3.0, 0.25, 4.0], [1.0, 0.7, 3.5]])  # 0.5 (x+1)(q99-q01)+q01
    np.testing.assert_allclose(unnormalize(x, stats), expected, rtol=1e-15)


def test_unnormalize_has_no_clip() -> None:
    stats = make_stats([0.0], [2.0])
    assert unnormalize([3.0], stats).tolist() == [4.0]


def test_missing_mask_means_all_dims_normalized() -> None:
    stats = make_stats([0.0, 0.0], [2.0, 2.0])
    assert stats.mask.tolist() == [True, True]
    assert unnormalize([1.0, -1.0], stats).tolist() == [2.0, 0.0]


def test_normalize_is_bounds_q99_with_eps_and_clip() -> None:
    q01, q99 = np.array([-1.0, 0.0, 5.0]), np.array([3.0, 1.0, 6.0])
    stats = make_stats(q01.tolist(), q99.tolist(), mask=[True, True, False])
    a = np.array([[0.0, 0.5, 7.5], [10.0, -10.0, 5.5]])
    out = normalize(a, stats)
    assert out[0, 0] == 2 * (0.0 + 1.0) / (4.0 + 1e-8) - 1  # eps in the denominator
    assert out[0, 1] == 2 * 0.5 / (1.0 + 1e-8) - 1
    assert out[1, :2].tolist() == [1.0, -1.0]  # clipped
    assert out[:, 2].tolist() == [7.5, 5.5]  # unmasked: passes through, not clipped


def test_normalize_maps_constant_dims_to_zero() -> None:
    # data_utils.py: dims where min == max become 0, masked or not.
    stats = make_stats([0.0, 1.0, 0.0], [1.0, 1.0, 1.0], min=[0.0, 1.0, 2.0], max=[1.0, 1.0, 2.0], mask=[True, True, False])
    assert normalize([0.5, 1.0, 2.0], stats).tolist() == [pytest.approx(0.0, abs=1e-7), 0.0, 0.0]
    assert normalize([1.0, 1.0, 2.0], stats)[1:].tolist() == [0.0, 0.0]


@FAST
@given(st.sampled_from(sorted(FACTS)), st.lists(st.floats(0, 1), min_size=7, max_size=7))
def test_unnormalize_inverts_normalize_inside_q01_q99(key: str, fractions: list[float]) -> None:
    stats = shipped_norm_stats()[key]
    span = stats.q99 - stats.q01
    a = stats.q01 + np.array(fractions) * span
    back = unnormalize(normalize(a, stats), stats)
    # The 1e-8 in the training map scales actions by span/(span+1e-8): error <= 1e-8 (+ rounding).
    np.testing.assert_allclose(back, a, rtol=0, atol=1e-8 + 1e-15 * np.abs(a).max())


@pytest.mark.parametrize("shape", [(6,), (8,), (2, 6), ()])
def test_wrong_last_dimension_is_a_value_error_naming_the_shape(shape: tuple[int, ...]) -> None:
    stats = shipped_norm_stats()["libero_spatial"]
    for fn in (normalize, unnormalize):
        with pytest.raises(ValueError, match=r"last dimension 7 .*got shape"):
            fn(np.zeros(shape), stats)


def test_batched_shapes_pass() -> None:
    stats = shipped_norm_stats()["libero_goal"]
    assert unnormalize(np.zeros((3, 4, 7)), stats).shape == (3, 4, 7)


def test_resolve_none_with_one_key_picks_it() -> None:
    assert resolve_unnorm_key({"only": {}}, None) == "only"


def test_resolve_none_with_several_keys_lists_them() -> None:
    with pytest.raises(UnnormKeyError, match="6 datasets.*bridge_orig, fractal20220817_data, libero_10"):
        resolve_unnorm_key(shipped_norm_stats(), None)


def test_resolve_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(UnnormKeyError) as info:
        load_norm_stats("libero_90")
    message = str(info.value)
    assert "'libero_90'" in message and all(key in message for key in FACTS)
    assert not message.startswith('"')  # KeyError's quoting is undone


def test_libero_key_falls_back_to_no_noops() -> None:
    registry = {"libero_spatial_no_noops": {}, "bridge_orig": {}}
    assert libero_unnorm_key("libero_spatial", registry) == "libero_spatial_no_noops"
    both = {"libero_spatial": {}, "libero_spatial_no_noops": {}}
    assert libero_unnorm_key("libero_spatial", both) == "libero_spatial"  # plain name wins
    with pytest.raises(UnnormKeyError, match="libero_goal"):
        libero_unnorm_key("libero_goal", registry)


def test_no_noops_key_selects_the_suite_statistics_under_its_own_name() -> None:
    """``{suite}_no_noops`` (the OFT checkpoints' key) resolves, in this one place, to a LIBERO suite
    held only under its plain name; the statistics come back under the name asked for."""
    shipped = shipped_norm_stats()
    assert resolve_unnorm_key(shipped, "libero_object_no_noops") == "libero_object"
    stats = load_norm_stats("libero_object_no_noops")
    assert stats.key == "libero_object_no_noops" and np.array_equal(stats.q99, shipped["libero_object"].q99)
    assert load_norm_stats("libero_object").key == "libero_object"
    both = {"libero_spatial": {}, "libero_spatial_no_noops": {}}
    assert resolve_unnorm_key(both, "libero_spatial_no_noops") == "libero_spatial_no_noops"  # an exact key wins
    for unknown in ("bridge_orig_no_noops", "libero_90_no_noops"):  # not LIBERO, or not held
        with pytest.raises(UnnormKeyError, match=f"unknown unnorm_key '{unknown}'"):
            resolve_unnorm_key(shipped, unknown)


def test_parse_rejects_entries_without_q01_q99() -> None:
    with pytest.raises(ValueError, match="'broken'.*'q01' and 'q99'"):
        parse_norm_stats({"broken": {"action": {"mean": [0.0]}}})


def test_wrong_key_gives_a_well_formed_action_at_the_wrong_scale() -> None:
    """Issue #203: bridge_orig stats on a LIBERO policy give valid-looking, tiny translations.

    The translation scale ratio is (q99 - q01) of libero_spatial over that of bridge_orig: 18.6x
    to 29.5x for x, y, z. The rotation spans are similar (0.8x to 2.2x), so the "20-40x" holds for
    translation only.
    """
    ids = np.array([31882, 31894, 31881, 31905, 31888, 31875, 31999])
    x = TOK.decode(ids)
    libero, bridge = shipped_norm_stats()["libero_spatial"], shipped_norm_stats()["bridge_orig"]
    right, wrong = unnormalize(x, libero), unnormalize(x, bridge)
    assert wrong.shape == (7,) and np.all(np.isfinite(wrong)) and wrong[6] == right[6]
    span_ratio = (libero.q99 - libero.q01)[:6] / (bridge.q99 - bridge.q01)[:6]
    assert np.all((span_ratio[:3] > 18) & (span_ratio[:3] < 30))
    assert np.all((span_ratio[3:] > 0.7) & (span_ratio[3:] < 2.5))
    # Around each stats' midpoint the action scales exactly by the span ratio.
    np.testing.assert_allclose(
        right[:6] - (libero.q01 + libero.q99)[:6] / 2, span_ratio * (wrong[:6] - (bridge.q01 + bridge.q99)[:6] / 2)
    )


def test_dataset_statistics_of_a_textbook_column() -> None:
    """0, 1, ..., 100 in every dim: q01 = 1 and q99 = 99 (linear interpolation at 0.01 * 100 = 1),
    mean 50, population std sqrt((101^2 - 1) / 12) = sqrt(850); the gripper (last dim) unmasked."""
    actions = np.repeat(np.arange(101.0)[:, None], 7, axis=1)
    entry = dataset_statistics(actions, num_trajectories=3)
    action = entry["action"]
    assert action["q01"] == [1.0] * 7 and action["q99"] == [99.0] * 7
    assert action["min"] == [0.0] * 7 and action["max"] == [100.0] * 7 and action["mean"] == [50.0] * 7
    assert action["std"] == pytest.approx([850 ** 0.5] * 7, rel=1e-12)
    assert action["mask"] == [True] * 6 + [False]
    assert entry["proprio"]["q99"] == [0.0] * 7
    assert (entry["num_transitions"], entry["num_trajectories"]) == (101, 3)
    stats = NormStats.from_entry("demos", entry)  # the entry is a valid checkpoint norm_stats value
    assert normalize(np.full(7, 99.0), stats).tolist() == pytest.approx([1.0] * 6 + [99.0])


def test_dataset_statistics_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\) with N >= 2"):
        dataset_statistics(np.zeros(7), num_trajectories=1)
    with pytest.raises(ValueError, match="mask has 2 entries for 7-dim actions"):
        dataset_statistics(np.zeros((5, 7)), num_trajectories=1, mask=[True, False])
