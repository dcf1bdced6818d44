"""The one action path: token ids -> normalized -> un-normalized -> environment command (facts §1-§4).

Expected numbers are literals: the book's worked example under ``libero_object`` (facts §4 q01/q99),
centre c_k = -1 + (2k + 1)/255 with k = 31999 - id, and the evaluation's gripper rule (facts §3).
"""

from __future__ import annotations

import numpy as np
import pytest

from vla_spec.actions import ActionProcessor, LiberoOutputs
from vla_spec.normalization import UnnormKeyError, shipped_norm_stats
from vla_spec.tokens import ActionTokenizer

pytestmark = pytest.mark.cpu

BOOK_IDS = [31882, 31894, 31881, 31905, 31888, 31875, 31999]
BOOK_NORMALIZED = [-20 / 255, -44 / 255, -18 / 255, -66 / 255, -32 / 255, -6 / 255, -254 / 255]
BOOK_ACTION = [0.099711, -0.164433, -0.066176, -0.013658, -0.000601, -0.039328, -0.996078]
MIDPOINT = [0.154018, -0.016071, 0.0, 0.005893, 0.016071, -0.036429, 0.0]  # id 31872 -> c = 0


@pytest.fixture(scope="module")
def libero_object() -> ActionProcessor:
    return ActionProcessor.select(shipped_norm_stats(), "libero_object")


def test_decode_the_worked_example(libero_object: ActionProcessor) -> None:
    normalized, action = libero_object.decode(BOOK_IDS)
    assert normalized.tolist() == pytest.approx(BOOK_NORMALIZED, abs=1e-15)
    assert action.tolist() == pytest.approx(BOOK_ACTION, abs=1e-6)
    assert libero_object.unnorm_key == "libero_object" and libero_object.action_dim == 7


def test_prediction_batches_and_keeps_margins(libero_object: ActionProcessor) -> None:
    prediction = libero_object.prediction([BOOK_IDS, [31872] * 7], [[0.5] * 7, [2.0] * 7])
    assert prediction.token_ids.dtype == np.int64 and prediction.margins.dtype == np.float32
    assert prediction.actions[0].tolist() == pytest.approx(BOOK_ACTION, abs=1e-6)
    assert prediction.actions[1].tolist() == pytest.approx(MIDPOINT, abs=1e-6)
    assert prediction.normalized[1].tolist() == [0.0] * 7 and prediction.unnorm_key == "libero_object"


def test_libero_outputs_binarize_and_invert_the_gripper(libero_object: ActionProcessor) -> None:
    """Centre -0.996 is below 0.5: the training convention's "close" (0), so the env gets +1."""
    command = LiberoOutputs(libero_object)(BOOK_IDS)
    assert command.tolist() == pytest.approx(BOOK_ACTION[:6] + [1.0], abs=1e-6)
    assert LiberoOutputs(libero_object, invert_gripper=False)(BOOK_IDS)[6] == -1.0  # the negative control
    open_ids = BOOK_IDS[:6] + [31744]  # top centre 0.996 > 0.5: open, env -1
    assert LiberoOutputs(libero_object)(open_ids)[6] == -1.0


def test_inverse_round_trip_only_quantizes(libero_object: ActionProcessor) -> None:
    """Env command -> 7 ids -> env command moves each arm dim by at most half a grid step."""
    outputs = LiberoOutputs(libero_object)
    command = np.array([0.1, -0.2, 0.3, 0.01, -0.02, 0.03, 1.0])
    ids = outputs.tokens(command)
    assert len(ids) == 7 and all(31744 <= i <= 31999 for i in ids)
    half_step = (np.array([0.8464285731315613, 0.84375, 0.9375, 0.08142857253551483, 0.14892856776714325,
                           0.0867857113480568]) - np.array([-0.5383928418159485, -0.8758928775787354, -0.9375,
                           -0.06964285671710968, -0.11678571254014969, -0.15964286029338837])) / 255 / 2
    back = outputs(ids)
    assert np.all(np.abs(back[:6] - command[:6]) <= half_step + 1e-12) and back[6] == 1.0
    assert ids[6] == 31872  # close (+1) is training 0.0, whose bin is id 31872 (edge 0 -> digitize 128)


def test_the_key_is_resolved_where_the_processor_is_made() -> None:
    stats = shipped_norm_stats()
    with pytest.raises(UnnormKeyError, match="unknown unnorm_key 'libero_90'; valid keys: bridge_orig"):
        ActionProcessor.select(stats, "libero_90")
    with pytest.raises(UnnormKeyError, match="trained on 6 datasets"):
        ActionProcessor.select(stats, None)
    only = {"libero_goal": stats["libero_goal"]}
    assert ActionProcessor.select(only, None).unnorm_key == "libero_goal"


def test_the_checkpoint_vocabulary_is_used() -> None:
    """A checkpoint whose text vocabulary is not 32000 decodes against its own: id 99 is the top bin at 100."""
    processor = ActionProcessor.select(shipped_norm_stats(), "libero_object", ActionTokenizer(vocab_size=100))
    normalized, _ = processor.decode([99] * 7)
    assert normalized.tolist() == pytest.approx([-254 / 255] * 7, abs=1e-15)


def test_wrong_shapes_are_refused(libero_object: ActionProcessor) -> None:
    with pytest.raises(ValueError, match="expected 7 action token ids"):
        LiberoOutputs(libero_object)(BOOK_IDS[:6])
    with pytest.raises(ValueError, match="expected 7 action token ids per action"):
        libero_object.decode(np.array(BOOK_IDS[:6]))
    with pytest.raises(ValueError, match="7-dim environment command"):
        LiberoOutputs(libero_object).tokens([0.0] * 6)
