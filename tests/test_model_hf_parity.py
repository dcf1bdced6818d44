"""Native OpenVLA vs the checkpoint's own remote code (``backend="hf-remote"``) on the same weights.

The remote code runs only under its own pins (transformers 4.40.1, timm 0.9.10), where this
project's model does not build (timm 0.9.10 cannot make its towers on the meta device), so the two
run in two environments: ``tox -e reference`` records the remote code's greedy tokens, margins and
top logits on the golden images (``scripts/make_reference_checkpoint.py record``), and
``tox -e reference-native`` loads the native model on the same folder and compares
(``--reference-answers FILE``). Tokens must agree up to near-ties of the reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla_spec.model.agreement import near_tie_divergences, near_ties
from tests.goldens import load_image

# torch and the model are imported by the tests, not at collection (conftest.TORCH_TESTS)


@pytest.mark.cpu
def test_native_matches_recorded_reference(reference_answers):
    import torch

    from vla_spec.model import from_pretrained

    answers = json.loads(reference_answers.read_text(encoding="utf-8"))
    device = "cuda" if answers["dtype"] == "bfloat16" else "cpu"  # the recording's own dtype: bfloat16 on CUDA
    native = from_pretrained(answers["checkpoint"], dtype=getattr(torch, answers["dtype"]), device=device)
    images = [load_image(name) for name, _ in answers["cases"]]
    observed = native.predict_action(images, [text for _, text in answers["cases"]], answers["unnorm_key"]).token_ids
    reference = np.array(answers["token_ids"])
    ties = near_ties(np.array(answers["margins"]), top_logits=np.array(answers["top_logits"]), dtype=answers["dtype"])
    assert near_tie_divergences(observed, reference, ties) == [], (observed.tolist(), reference.tolist())
    # Negative control: one clear-margin token of the reference moved by one bin is a divergence.
    row, step = np.argwhere(~ties)[0]
    moved = reference.copy()
    moved[row, step] += 1 if moved[row, step] < 31999 else -1
    assert near_tie_divergences(observed, moved, ties) != []


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
        import torch

        self.prompts.append(prompt)
        return _FakeInputs(input_ids=torch.tensor([[1, 5, 6]]), pixel_values=torch.zeros(1, 6, 224, 224))

    def generate(self, input_ids, pixel_values, max_new_tokens, do_sample, output_scores, return_dict_in_generate):
        import torch

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
    import torch

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
