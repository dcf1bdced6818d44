"""Spec of the LIBERO image path: observation -> 224 x 224 uint8 model image (facts §3)."""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

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
    """sha256 of the uint8 model images. The JPEG step depends on the libjpeg-turbo bundled with Pillow
    (the encoder) and with simplejpeg (the decoder): both recorded, so a diff shows them; the other
    steps are checked without JPEG as well."""
    import simplejpeg
    from PIL import features

    turbo = features.version_feature("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    record = {"libjpeg": features.version("jpg"), "libjpeg_turbo": turbo, "simplejpeg": simplejpeg.__version__}
    for name, image in fixtures.items():
        rotated = im.rotate_180(image)
        record[name] = {
            "center_crop": sha256(im.libero_image(image)),
            "no_crop": sha256(im.libero_image(image, center_crop_enabled=False)),
            "without_jpeg": sha256(im.center_crop(im.resize_lanczos(rotated))),
        }
    assert record == golden


def tf_lanczos3_row(in_size: int, out_size: int, x: int) -> dict[int, float]:
    """Facts §3 step 3, in float64: TF's antialiased Lanczos-3 weights of output pixel ``x``."""
    kernel_scale = max(in_size / out_size, 1.0)
    sample = (x + 0.5) * in_size / out_size
    first = max(math.ceil(sample - 3 * kernel_scale - 0.5), 0)
    last = min(math.floor(sample + 3 * kernel_scale - 0.5), in_size - 1)

    def lanczos3(t: float) -> float:
        return 1.0 if t <= 1e-3 else 0.0 if t > 3 else 3 * math.sin(math.pi * t) * math.sin(math.pi * t / 3) / (math.pi * t) ** 2

    weights = {j: lanczos3(abs((j + 0.5 - sample) / kernel_scale)) for j in range(first, last + 1)}
    total = sum(weights.values())
    return {j: w / total for j, w in weights.items()}


def span_row(in_size: int, out_size: int, x: int) -> dict[int, float]:
    """Output pixel ``x``'s nonzero weights by source pixel (:func:`vla_spec.images.lanczos3_spans`)."""
    spans = im.lanczos3_spans(in_size, out_size)
    return {int(j): float(w) for j, w in zip(spans.sources[x], spans.weights[x]) if w != 0}


@pytest.mark.parametrize("in_size, out_size, x", [(256, 224, 0), (256, 224, 100), (256, 224, 223), (128, 224, 7), (224, 224, 50)])
def test_lanczos3_weights_are_tfs_kernel(in_size, out_size, x):
    """Output pixel x's span and weights: TF's scale_and_translate (antialias: the kernel is stretched
    by in / out when shrinking, not when growing). TF computes in float32: the sample position (up to
    256) carries 1.5e-5 of rounding, which moves the weights by as much."""
    spans = im.lanczos3_spans(in_size, out_size)
    assert spans.sources.dtype == np.int64 and spans.weights.dtype == np.float32
    row, expected = span_row(in_size, out_size, x), tf_lanczos3_row(in_size, out_size, x)
    assert set(row) <= set(expected)
    assert [row.get(j, 0.0) for j in sorted(expected)] == pytest.approx([expected[j] for j in sorted(expected)], abs=5e-5)


def test_lanczos3_span_at_256_to_224():
    """Output pixel 0 samples at 0.5 * 256 / 224 = 0.5714 with reach 3 * 256 / 224 = 3.43: sources 0..3;
    pixel 100 samples at 114.857: sources 111..117 (ceil(110.93) .. floor(117.79))."""
    assert sorted(span_row(256, 224, 0)) == [0, 1, 2, 3]
    assert sorted(span_row(256, 224, 100)) == list(range(111, 118))


@given(st.integers(1, 300), st.integers(1, 300))
@settings(max_examples=40, deadline=None)
def test_lanczos3_weights_sum_to_one_near_the_sample(in_size, out_size):
    """Every output pixel is a weighted mean (weights sum to 1) of sources within 3 kernel widths,
    taken in ascending order (the order TF adds them in)."""
    spans = im.lanczos3_spans(in_size, out_size)
    assert spans.sources.shape == spans.weights.shape and spans.sources.shape[0] == out_size
    assert np.allclose(spans.weights.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(spans.sources, axis=1) >= 0) and spans.sources.min() >= 0 and spans.sources.max() < in_size
    reach = 3 * max(in_size / out_size, 1.0) + 0.5
    rows, taps = np.nonzero(spans.weights)
    assert np.all(np.abs(spans.sources[rows, taps] + 0.5 - (rows + 0.5) * in_size / out_size) <= reach + 1e-3)


@given(hnp.arrays(np.uint8, (16, 12, 3)))
@settings(max_examples=25, deadline=None)
def test_resize_to_the_same_size_keeps_the_image(image):
    """At scale 1 the kernel samples pixel centres: lanczos3(0) = 1, lanczos3(1) = lanczos3(2) = 0."""
    pixels = np.ascontiguousarray(np.pad(image, ((0, 0), (2, 2), (0, 0))))  # 16 x 16
    assert np.array_equal(im.resize_lanczos(pixels, 16), pixels)


def test_jpeg_decode_fast_and_accurate_idct(fixtures):
    """``fast_idct=False`` decodes exactly as PIL (the accurate IDCT); the fast IDCT (TF's default) differs."""
    from PIL import Image

    data = im.jpeg_bytes(fixtures["scene"])
    with Image.open(io.BytesIO(data)) as decoded:
        pil = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
    assert np.array_equal(im.jpeg_decode(data, fast_idct=False), pil)
    fast = im.jpeg_decode(data)
    assert fast.shape == pil.shape and fast.dtype == np.uint8
    assert not np.array_equal(fast, pil)
    assert np.array_equal(im.jpeg_roundtrip(fixtures["scene"]), fast)
