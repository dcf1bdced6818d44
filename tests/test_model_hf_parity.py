"""Native OpenVLA vs the checkpoint's own remote code (``backend="hf-remote"``) on real weights.

Needs a CUDA GPU, ``--openvla-path DIR`` and an environment where the remote code runs (the
reference pins transformers 4.40.1 / timm 0.9.10). Tokens must agree up to near-ties.
"""

from __future__ import annotations

import pytest
import torch

from vla_spec.model import from_pretrained
from vla_spec.model.agreement import near_tie_divergences, near_ties
from tests.goldens import GOLDEN_IMAGES, GOLDEN_INSTRUCTIONS, load_image


@pytest.mark.gpu
def test_native_matches_hf_remote(openvla_path):
    try:
        remote = from_pretrained(openvla_path, backend="hf-remote", dtype=torch.bfloat16, device="cuda")
    except ImportError as error:  # only an import failure is a skip; any other error is a broken adapter
        import transformers

        pytest.skip(
            f"the checkpoint's remote code cannot be imported under transformers {transformers.__version__} ({error}); "
            "it pins transformers 4.40.1 and timm 0.9.10: run tox -e reference"
        )
    images = [load_image(name) for name in GOLDEN_IMAGES]
    texts = [GOLDEN_INSTRUCTIONS[i % len(GOLDEN_INSTRUCTIONS)] for i in range(len(images))]
    key = "libero_spatial" if "libero_spatial" in remote.norm_stats else None
    reference = remote.predict_action(images, texts, key)
    del remote
    torch.cuda.empty_cache()
    native = from_pretrained(openvla_path, dtype=torch.bfloat16, device="cuda").predict_action(images, texts, key)
    ties = near_ties(reference.margins, top_logits=reference.top_logits, dtype="bfloat16")
    assert near_tie_divergences(native.token_ids, reference.token_ids, ties) == []


class _FakeInputs(dict):
    def to(self, device, dtype=None):
        return self


class _FakeRemote:
    """Stands in for the remote-code processor + model: records what the adapter sends."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.prompts: list[str] = []
        self.input_ids: list[list[int]] = []

    def processor(self, prompt, image):
        self.prompts.append(prompt)
        return _FakeInputs(input_ids=torch.tensor([[1, 5, 6]]), pixel_values=torch.zeros(1, 6, 224, 224))

    def generate(self, input_ids, pixel_values, max_new_tokens, do_sample, output_scores, return_dict_in_generate):
        assert not do_sample and output_scores and return_dict_in_generate
        self.input_ids.append(input_ids[0].tolist())
        scores = []
        for token in self.tokens[:max_new_tokens]:
            logits = torch.zeros(1, 32064)
            logits[0, token], logits[0, 0] = 3.0, 1.0
            scores.append(logits)
        new = torch.tensor([self.tokens[:max_new_tokens]])
        return type("Out", (), {"sequences": torch.cat([input_ids, new], dim=1), "scores": scores})()


@pytest.mark.cpu
def test_hf_remote_adapter_mirrors_reference_predict_action():
    """Appends 29871, greedy-generates 7 tokens, decodes against 32000, unnormalizes, margins."""
    import numpy as np

    from vla_spec.model.hf_remote import HFRemoteOpenVLA
    from vla_spec.normalization import shipped_norm_stats, unnormalize
    from vla_spec.tokens import ActionTokenizer

    fake = _FakeRemote([31872, 31744, 31999, 31808, 31872, 31872, 31744])
    adapter = HFRemoteOpenVLA.__new__(HFRemoteOpenVLA)
    adapter.device, adapter.dtype = torch.device("cpu"), torch.float32
    adapter.processor, adapter.model = fake.processor, fake
    adapter.norm_stats = {"libero_spatial": shipped_norm_stats()["libero_spatial"]}
    adapter.action_tokenizer = ActionTokenizer(vocab_size=32000)
    image = np.zeros((224, 224, 3), np.uint8)
    result = adapter.predict_action([image, image], ["Put the bowl on the stove", "open the drawer"])
    assert fake.prompts == [
        "In: What action should the robot take to put the bowl on the stove?\nOut:",
        "In: What action should the robot take to open the drawer?\nOut:",
    ]
    assert fake.input_ids == [[1, 5, 6, 29871]] * 2
    assert result.token_ids.tolist() == [fake.tokens] * 2 and result.unnorm_key == "libero_spatial"
    assert result.margins.tolist() == [[2.0] * 7] * 2
    assert result.top_logits.tolist() == [[3.0] * 7] * 2
    expected = unnormalize(ActionTokenizer().decode(np.array(fake.tokens)), shipped_norm_stats()["libero_spatial"])
    assert np.array_equal(result.actions[0], expected)
