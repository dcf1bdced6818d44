"""Spec of the model's processor: images -> pixel_values [B, 6, 224, 224] (facts §2, "Image processor")."""

from __future__ import annotations

import numpy as np
import pytest

from vla_spec.images import libero_image
from tests.goldens import load_image

pytestmark = pytest.mark.cpu


@pytest.mark.parametrize(
    "bad, expected",
    [
        (np.zeros((256, 256), np.uint8), r"H x W x 3 .*uint8.*\(256, 256\)"),
        (np.zeros((256, 256, 3), np.float32), r"H x W x 3 and dtype uint8.*float32"),
    ],
)
def test_wrong_image_says_what_is_expected(bad, expected):
    from vla_spec.model.processor import process_images

    with pytest.raises(ValueError, match=expected):
        process_images(bad)


def test_processor_normalization_constants():
    from vla_spec.model.processor import DINOV2_MEAN, DINOV2_STD, SIGLIP_MEAN, SIGLIP_STD, process_images

    pixels = process_images([np.zeros((256, 256, 3), np.uint8), np.full((256, 256, 3), 255, np.uint8)])
    assert tuple(pixels.shape) == (2, 6, 224, 224) and str(pixels.dtype) == "torch.float32"
    black, white = pixels[0].reshape(6, -1), pixels[1].reshape(6, -1)
    for c in range(3):
        mean, std = DINOV2_MEAN[c], DINOV2_STD[c]
        assert black[c].unique().tolist() == pytest.approx([(0 - mean) / std])
        assert white[c].unique().tolist() == pytest.approx([(1 - mean) / std])
        assert black[3 + c].unique().tolist() == [-1.0]
        assert white[3 + c].unique().tolist() == [1.0]
    assert DINOV2_MEAN == (0.485, 0.456, 0.406) and DINOV2_STD == (0.229, 0.224, 0.225)
    assert SIGLIP_MEAN == SIGLIP_STD == (0.5, 0.5, 0.5)


def test_processor_keeps_224_images_and_orientation():
    """A 224 x 224 input is only rescaled to [0, 1] and normalized; row 0 stays the top row."""
    from vla_spec.model.processor import process_images

    image = libero_image(load_image("marker"), center_crop_enabled=False)
    pixels = process_images(image)[0]
    siglip = ((pixels[3:] * 0.5 + 0.5) * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.array_equal(siglip, image)


def test_processor_accepts_pil_and_arrays_alike():
    from PIL import Image

    from vla_spec.model.processor import process_images

    scene = load_image("scene")
    assert np.array_equal(process_images(scene).numpy(), process_images(Image.fromarray(scene)).numpy())


def test_uint8_expansion_equals_to_tensor_and_normalize():
    """``pixel_values_from_uint8`` (the table lookup the GPU path uses) gives torchvision's
    ``to_tensor`` + ``normalize`` values exactly, for every uint8 level in every channel."""
    import torch
    import torchvision.transforms.functional as TVF

    from vla_spec.model.processor import TOWER_NORMALIZATION, pixel_values_from_uint8

    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([np.tile(levels, (4, 1)), np.tile(levels[::-1], (4, 1)), np.tile(np.roll(levels, 7), (4, 1))], -1)
    unit = TVF.to_tensor(image)
    want = torch.cat([TVF.normalize(unit, list(mean), list(std)) for mean, std in TOWER_NORMALIZATION])
    got = pixel_values_from_uint8(torch.from_numpy(image)[None])[0]
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(pixel_values_from_uint8(torch.from_numpy(image)[None], torch.bfloat16)[0], want.bfloat16())
    with pytest.raises(ValueError, match=r"uint8 \[B, H, W, 3\]"):
        pixel_values_from_uint8(torch.from_numpy(image))
