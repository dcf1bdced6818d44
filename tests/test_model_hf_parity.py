"""Native OpenVLA vs the checkpoint's own remote code (``backend="hf-remote"``) on real weights.

Needs a CUDA GPU, ``--openvla-path DIR`` and an environment where the remote code runs (the
reference pins transformers 4.40.1 / timm 0.9.10). Tokens must agree up to near-ties.
"""

from __future__ import annotations

import pytest
import torch

from vla_spec.model import from_pretrained
from vla_spec.model.agreement import near_tie_divergences
from vla_spec.model.goldens import GOLDEN_IMAGES, GOLDEN_INSTRUCTIONS, load_image


@pytest.mark.gpu
def test_native_matches_hf_remote(openvla_path):
    try:
        remote = from_pretrained(openvla_path, backend="hf-remote", dtype=torch.bfloat16, device="cuda")
    except Exception as error:  # noqa: BLE001 - any failure of foreign remote code is a skip reason
        pytest.skip(f"the checkpoint's remote code does not load in this environment: {error!r}")
    images = [load_image(name) for name in GOLDEN_IMAGES]
    texts = [GOLDEN_INSTRUCTIONS[i % len(GOLDEN_INSTRUCTIONS)] for i in range(len(images))]
    key = "libero_spatial" if "libero_spatial" in remote.norm_stats else None
    reference = remote.predict_action(images, texts, key)
    del remote
    torch.cuda.empty_cache()
    native = from_pretrained(openvla_path, dtype=torch.bfloat16, device="cuda").predict_action(images, texts, key)
    assert near_tie_divergences(native.token_ids, reference.token_ids, reference.margins) == []
