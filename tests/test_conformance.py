"""The conformance claims (vla_spec.conformance) on the implementation under test, and the known-bad
implementations they must catch.

``test_claim[CLAIM]`` judges ``--impl`` (default: the native model on tiny-openvla; ``pytest -m cpu
--impl IMPL`` judges another). Each negative control is a known-bad implementation written here; it
provides only the level it breaks and must fail exactly the claims listed for it and hold all other
claims of that level. (The server that drops ``unnorm_key`` is in tests/test_serve.py, sim tier.)
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from vla_spec import images
from vla_spec.adapters import NativeImpl, levels
from vla_spec.conformance import CLAIMS, NotApplicable, Probe, run_claims
from vla_spec.tokens import ActionTokenizer

pytestmark = pytest.mark.cpu

@pytest.fixture(scope="session")
def probe(impl) -> Probe:  # type: ignore[no-untyped-def]
    return Probe(impl)


@pytest.mark.parametrize("claim", CLAIMS, ids=[claim.name for claim in CLAIMS])
def test_claim(claim, probe) -> None:  # type: ignore[no-untyped-def]
    provided = {m for methods in levels(probe.impl).values() for m in methods}
    if claim.method not in provided:
        pytest.skip(f"{probe.impl.name} has no {claim.method}() ({claim.level} level not provided)")
    try:
        claim.check(probe)  # ClaimFailed is an AssertionError: the counterexample is the failure message
    except NotApplicable as reason:
        pytest.skip(str(reason))


# --- known-bad implementations ----------------------------------------------------------------


class SGLangDecode:
    """SGLang's documented OpenVLA decode: ``(id - 31744) / 255 * 2 - 1``: upward, bin edges, no statistics."""

    name = "SGLang's documented decode"

    def decode(self, token_ids, unnorm_key):  # type: ignore[no-untyped-def]
        return (np.asarray(token_ids, dtype=np.float64) - 31744) / 255 * 2 - 1


class NoUnnormalizeDecode:
    """The right bins, but the normalized value is returned: no dataset statistics."""

    name = "decode without un-normalization"

    def decode(self, token_ids, unnorm_key):  # type: ignore[no-untyped-def]
        return ActionTokenizer().decode(np.asarray(token_ids, dtype=np.int64))


class AccurateIDCT:
    """The LIBERO path's JPEG step decoded with libjpeg's accurate (islow) IDCT, as PIL does."""

    name = "JPEG decoded with the accurate IDCT"

    def jpeg_roundtrip(self, image):  # type: ignore[no-untyped-def]
        import io

        from PIL import Image

        with Image.open(io.BytesIO(images.jpeg_bytes(image))) as decoded:
            return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


class OneNormalization:
    """A processor that normalizes only for SigLIP and hands DINOv2 x / 255."""

    name = "processor without the DINOv2 normalization"

    def pixel_values(self, image):  # type: ignore[no-untyped-def]
        unit = image.transpose(2, 0, 1).astype(np.float32) / 255
        return np.concatenate([unit, (unit - 0.5) / 0.5])


class PolicyOf:
    """Only the policy level of the native implementation on a modified copy of its model."""

    def __init__(self, name: str, native: NativeImpl, model) -> None:  # type: ignore[no-untyped-def]
        self.name, self.norm_stats = name, native.norm_stats
        self.act = NativeImpl(str(native.folder), model=model).act


def image_blind(native: NativeImpl) -> PolicyOf:
    """openvla issue #346: the vision path never reaches the LLM (its patch slots stay zero)."""
    import torch

    model = native.model()
    blind = copy.copy(model)
    blind.vision_runner = lambda pixel_values: torch.zeros(
        pixel_values.shape[0], model.vision_backbone.num_patches, model.config.hidden_size, dtype=model.dtype
    )
    return PolicyOf("a model that ignores the image", native, blind)


def case_kept(native: NativeImpl) -> PolicyOf:
    """SGLang's documented prompt: the instruction is not lowercased."""
    from vla_spec.model.processor import OpenVLAProcessor
    from vla_spec.prompt import PROMPT_TEMPLATE, with_empty_token

    class CaseKeeping(OpenVLAProcessor):
        def prompt_ids(self, instructions):  # type: ignore[no-untyped-def]
            return [with_empty_token(self.tokenizer(PROMPT_TEMPLATE.format(instruction=i))["input_ids"]) for i in instructions]

    model = native.model()
    kept = copy.copy(model)
    kept.processor = CaseKeeping(model.processor.tokenizer, model.processor.image_size)
    return PolicyOf("a prompt that keeps the instruction's case", native, kept)


DECODE = {"decode.book-example", "decode.bin-centres", "decode.direction", "decode.unnormalize"}
CONTROLS = {
    "sglang-decode": (lambda native: SGLangDecode(), DECODE),
    "no-unnormalize": (lambda native: NoUnnormalizeDecode(), {"decode.book-example", "decode.unnormalize"}),
    "accurate-idct": (lambda native: AccurateIDCT(), {"processor.jpeg-fast-idct"}),
    "one-normalization": (lambda native: OneNormalization(), {"processor.dinov2-norm"}),
    "image-blind": (image_blind, {"policy.image-used"}),
    "case-kept": (case_kept, {"policy.lowercase"}),
}


@pytest.fixture(scope="module")
def native() -> NativeImpl:
    return NativeImpl()


@pytest.mark.parametrize("control", CONTROLS)
def test_known_bad_implementation_fails_exactly_its_claims(control, native) -> None:  # type: ignore[no-untyped-def]
    build, breaks = CONTROLS[control]
    verdicts = {v.claim.name: v for v in run_claims(build(native))}
    failed = {name for name, v in verdicts.items() if v.status == "fails"}
    assert failed == breaks, {name: verdicts[name].detail for name in failed ^ breaks}
    checked = {name for name, v in verdicts.items() if v.status != "n/a"}
    held = {name for name, v in verdicts.items() if v.status == "holds"}
    assert held == checked - breaks, {name: (verdicts[name].status, verdicts[name].detail) for name in checked - breaks - held}


def test_hf_remote_adapter_answers_with_the_remote_code_own_action() -> None:
    """The policy level of HFRemoteImpl: the action is the remote model's own ``predict_action``
    (its decode, not ours), the tokens are those its ``generate`` returned inside that call (one
    forward), the model is left as it was; its key assertion is a refusal."""
    import torch

    from vla_spec.adapters import HFRemoteImpl, Refused
    from vla_spec.model.hf_remote import HFRemoteOpenVLA
    from vla_spec.normalization import shipped_norm_stats
    from tests.test_model_hf_parity import _FakeRemote

    class Remote(_FakeRemote):
        def predict_action(self, input_ids, pixel_values, unnorm_key, do_sample):  # type: ignore[no-untyped-def]
            assert unnorm_key == "libero_spatial", f"The `unnorm_key` you chose ({unnorm_key}) is not in the available statistics"
            self.generate(input_ids, max_new_tokens=7, pixel_values=pixel_values, do_sample=do_sample)
            return np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], dtype=np.float32)

        def generate(self, input_ids, max_new_tokens, **kwargs):  # type: ignore[no-untyped-def]
            return torch.cat([input_ids, torch.tensor([self.tokens[:max_new_tokens]])], dim=1)  # the ids, as the reference's call

    fake = Remote([31872, 31744, 31999, 31808, 31872, 31872, 31744])
    remote = HFRemoteOpenVLA.__new__(HFRemoteOpenVLA)
    remote.device, remote.dtype, remote.processor, remote.model = torch.device("cpu"), torch.float32, fake.processor, fake
    remote.norm_stats = {"libero_spatial": shipped_norm_stats()["libero_spatial"]}
    remote.action_tokenizer = ActionTokenizer()
    impl = HFRemoteImpl.__new__(HFRemoteImpl)
    impl.remote, impl.norm_stats, impl.name = remote, remote.norm_stats, "fake remote"
    answer = impl.act(np.zeros((224, 224, 3), np.uint8), "Put The Bowl", "libero_spatial")
    assert answer.action.dtype == np.float64 and answer.action.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert answer.token_ids.tolist() == fake.tokens and "generate" not in vars(fake)
    assert fake.prompts[0] == "In: What action should the robot take to put the bowl?\nOut:"
    with pytest.raises(Refused, match="not in the available statistics"):
        impl.act(np.zeros((224, 224, 3), np.uint8), "put the bowl", "bridge_orig")
    assert "generate" not in vars(fake)


def test_the_book_example_does_not_apply_to_a_checkpoint_with_its_own_libero_object_statistics() -> None:
    """The book's action assumes OpenVLA's libero_object q01/q99; a checkpoint trained on other data
    (``tiny-vla-libero-object``: statistics from its own demonstrations) is not judged by it."""
    from dataclasses import replace

    from vla_spec.normalization import shipped_norm_stats

    official = shipped_norm_stats()

    class OwnStatistics(NoUnnormalizeDecode):
        name = "a decode with its own libero_object statistics"
        norm_stats = {**official, "libero_object": replace(official["libero_object"], q99=official["libero_object"].q99 * 1.01)}

    verdicts = {v.claim.name: v for v in run_claims(OwnStatistics())}
    assert verdicts["decode.book-example"].status == "n/a"
    assert "its own" in verdicts["decode.book-example"].detail
    assert verdicts["decode.unnormalize"].status == "fails"  # the statistics-independent claims still judge it
