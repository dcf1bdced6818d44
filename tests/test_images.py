"""Spec of the LIBERO image path: observation -> 224 x 224 uint8 model image (facts §3)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from vla_spec import images as im
from tests.goldens import GOLDEN_IMAGES, load_image

pytestmark = pytest.mark.cpu


@pytest.fixture(scope="module")
def fixtures() -> dict[str, np.ndarray]:
    return {name: load_image(name) for name in GOLDEN_IMAGES}


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_rotation_is_180_degrees_not_flipud(fixtures):
    marker = fixtures["marker"]
    rotated = im.rotate_180(marker)
    assert np.array_equal(rotated, np.rot90(marker, 2))
    assert not np.array_equal(rotated, np.flipud(marker))
    assert tuple(rotated[-1, -1]) == (255, 0, 0)  # the red top-left corner ends bottom-right


@pytest.mark.parametrize(
    "bad, expected",
    [
        (np.zeros((256, 256), np.uint8), r"H x W x 3 .*uint8.*\(256, 256\)"),
        (np.zeros((256, 256, 4), np.uint8), r"H x W x 3 .*\(256, 256, 4\)"),
        (np.zeros((256, 256, 3), np.float32), r"H x W x 3 and dtype uint8.*float32"),
    ],
)
def test_wrong_image_says_what_is_expected(bad, expected):
    with pytest.raises(ValueError, match=expected):
        im.libero_image(bad)


def test_non_array_image_is_rejected():
    with pytest.raises(TypeError, match="H x W x 3 and dtype uint8"):
        im.rotate_180([[0, 0, 0]])


def test_center_crop_box_covers_90_percent_of_the_area():
    y1, x1, y2, x2 = im.center_crop_box()
    side = y2 - y1
    assert side == pytest.approx(math.sqrt(0.9), abs=1e-7)
    assert (x2 - x1) == pytest.approx(side)
    assert y1 == pytest.approx(0.025658, abs=1e-6) and x1 == pytest.approx(0.025658, abs=1e-6)
    assert y1 + y2 == pytest.approx(1.0) and x1 + x2 == pytest.approx(1.0)


def test_center_crop_samples_the_box_bilinearly():
    """On a ramp R = column index, output column j samples x = x1*255 + j*(x2-x1)*255/223."""
    ramp = np.zeros((256, 256, 3), np.uint8)
    ramp[..., 0] = np.arange(256, dtype=np.uint8)[None, :]
    out = im.center_crop(ramp)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    y1, x1, y2, x2 = im.center_crop_box()
    source_x = x1 * 255 + np.arange(224) * (x2 - x1) * 255 / 223
    expected = np.trunc(source_x / 255 * 255.5).astype(np.uint8)  # convert_image_dtype's x * 255.5
    assert np.array_equal(out[0, :, 0], expected)
    assert np.all(out[..., 0] == out[:1, :, 0])  # constant down each column
    assert not out[..., 1:].any()


def test_constant_images_survive_the_libero_path_and_crop():
    for value in (0, 255):
        flat = np.full((256, 256, 3), value, np.uint8)
        assert np.array_equal(im.center_crop(im.resize_lanczos(flat)), np.full((224, 224, 3), value, np.uint8))
    grey = np.full((256, 256, 3), 128, np.uint8)
    assert np.abs(im.jpeg_roundtrip(grey).astype(int) - 128).max() <= 1


def test_libero_image_shape_and_order(fixtures):
    scene = fixtures["scene"]
    out = im.libero_image(scene)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    manual = im.center_crop(im.resize_lanczos(im.jpeg_roundtrip(im.rotate_180(scene))))
    assert np.array_equal(out, manual)
    assert np.array_equal(im.libero_image(scene, center_crop_enabled=False), im.resize_lanczos(im.jpeg_roundtrip(im.rotate_180(scene))))


def test_libero_image_checksums(fixtures, golden):
    """sha256 of the uint8 model images. The JPEG step depends on the libjpeg bundled with Pillow
    (recorded, so a diff shows it); the other steps are checked without JPEG as well."""
    from PIL import features

    turbo = features.version_feature("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    record = {"libjpeg": features.version("jpg"), "libjpeg_turbo": turbo}
    for name, image in fixtures.items():
        rotated = im.rotate_180(image)
        record[name] = {
            "center_crop": sha256(im.libero_image(image)),
            "no_crop": sha256(im.libero_image(image, center_crop_enabled=False)),
            "without_jpeg": sha256(im.center_crop(im.resize_lanczos(rotated))),
        }
    assert record == golden
