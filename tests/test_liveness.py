"""The model must look at its inputs (openvla issue #346), and the check must catch a model that doesn't."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import pytest

from tests.goldens import load_tiny

if TYPE_CHECKING:  # torch and the model are imported by the tests, not at collection (conftest.TORCH_TESTS)
    from vla_spec.model import OpenVLA


@pytest.fixture(scope="module")
def tiny() -> OpenVLA:
    return load_tiny()


def without_vision(model: OpenVLA, mode: str) -> OpenVLA:
    """A broken copy sharing the weights: the image never reaches the LLM (issue #346 failure modes)."""
    import torch

    broken = copy.copy(model)  # shallow: same submodules, own __dict__ for its vision runner
    if mode == "skipped":  # vision path not run at all; patch slots left as zeros
        broken.vision_runner = lambda pixel_values: torch.zeros(
            pixel_values.shape[0], model.vision_backbone.num_patches, model.config.hidden_size, dtype=model.dtype
        )
    else:  # "zeroed": towers and projector run, but their output is discarded
        broken.vision_runner = lambda pixel_values: model.encode_images_eager(pixel_values) * 0
    return broken


@pytest.mark.cpu
def test_tiny_model_is_live(tiny):
    from vla_spec.model.liveness import HOOKED_MODULES, check_liveness

    report = check_liveness(tiny)
    assert report.ok, report.problems
    assert report.calls == {name: 1 for name in HOOKED_MODULES}
    assert report.image_delta > 1e-2 and report.instruction_delta > 1e-4


@pytest.mark.cpu
@pytest.mark.parametrize("mode", ["skipped", "zeroed"])
def test_liveness_check_catches_a_model_that_ignores_the_image(tiny, mode):
    from vla_spec.model.liveness import HOOKED_MODULES, check_liveness

    report = check_liveness(without_vision(tiny, mode))
    assert not report.ok
    assert report.image_delta == 0.0
    assert any("black and white images give the same logits" in p for p in report.problems)
    if mode == "skipped":
        assert report.calls == {name: 0 for name in HOOKED_MODULES}
        assert sum("was never called" in p for p in report.problems) == 3


@pytest.mark.cpu
def test_liveness_check_catches_a_model_that_ignores_the_instruction(tiny):
    from vla_spec.model.liveness import check_liveness

    from vla_spec.model.processor import OpenVLAProcessor

    class OneInstruction(OpenVLAProcessor):
        def prompt_ids(self, instructions):  # type: ignore[no-untyped-def]
            return super().prompt_ids(["put the bowl on the stove"] * len(instructions))

    broken = copy.copy(tiny)
    broken.processor = OneInstruction(tiny.tokenizer, tiny.processor.image_size)
    report = check_liveness(broken)
    assert report.instruction_delta == 0.0
    assert report.problems == ("two instructions give the same logits (max diff 0 <= 0.0001)",)


@pytest.mark.gpu
def test_real_checkpoint_is_live(openvla_path):
    """The issue-346 invariant on real weights (bfloat16, CUDA)."""
    import torch

    from vla_spec.model.liveness import check_liveness
    from vla_spec.model.loading import load_cached

    report = check_liveness(load_cached(str(openvla_path), torch.bfloat16, "cuda"))
    assert report.ok, report.problems
