"""Images: the LIBERO evaluation's observation path, camera frame -> 224 x 224 model image.

Conventions: images are numpy ``uint8`` arrays of shape H x W x 3 (RGB, row 0 = top of the image
as stored). The model's own processor (bicubic resize, per-tower normalization, ``pixel_values``)
runs after this path: :mod:`vla_spec.model.processor`. numpy, PIL and simplejpeg, no torch.

**LIBERO path** (:func:`libero_image`, openvla ``experiments/robot/libero/libero_utils.py`` and
``openvla_utils.py``), applied to ``obs["agentview_image"]`` (256 x 256, upside down). It reproduces
TensorFlow's pixels (``tf.image.encode_jpeg``, ``tf.io.decode_image``, ``tf.image.resize``,
``tf.image.crop_and_resize``): on the 12 reference LIBERO frames every value equals TF's, on any CPU
(``tests/test_images_reference.py``):

1. :func:`rotate_180`: ``img[::-1, ::-1]``, a 180 degree rotation (both axes), NOT ``np.flipud``.
2. :func:`jpeg_roundtrip`: encode JPEG at quality 95 with 4:2:0 chroma (PIL's libjpeg-turbo, whose
   decoded pixels equal those of TF's encoder), decode with libjpeg-turbo's *fast integer IDCT* and
   fancy upsampling (:func:`jpeg_decode`, simplejpeg), as ``tf.io.decode_image`` does by default
   (``dct_method=""``). PIL decodes with the accurate IDCT: +0.7 grey levels brighter on average.
3. :func:`resize_lanczos`: to 224 x 224 with TF's ``scale_and_translate`` Lanczos-3 kernel with
   antialiasing (``tf.image.resize(method="lanczos3", antialias=True)``) in float32, then
   ``round`` (half to even), ``clip(0, 255)``, uint8, with TF's spans (:func:`lanczos3_spans`) and
   TF's order of float32 additions. PIL's LANCZOS is another kernel.
4. :func:`center_crop` (when ``center_crop=True``, the LIBERO default): a box of side
   sqrt(0.9) = 0.94868 of height and width, centred, resized back to 224 x 224 by bilinear sampling.
   Reproduces ``tf.image.crop_and_resize``'s sampling formula and ``convert_image_dtype``'s
   float <-> uint8 conversions (x / 255 in, ``trunc(clip(x) * 255.5)`` out) in float32 with numpy.
"""

from __future__ import annotations

import functools
import io
from typing import Any, NamedTuple

import numpy as np

MODEL_IMAGE_SIZE = 224
JPEG_QUALITY = 95
CENTER_CROP_AREA = 0.9


def check_rgb_uint8(image: Any, what: str = "image") -> np.ndarray:
    """Return ``image`` as an H x W x 3 uint8 array, or raise saying what was expected."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of shape H x W x 3 and dtype uint8, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"{what} must have shape H x W x 3 and dtype uint8 (RGB), got shape {image.shape} and dtype {image.dtype}"
        )
    return image


def rotate_180(image: np.ndarray) -> np.ndarray:
    """``image[::-1, ::-1]``: LIBERO renders upside down; this equals ``np.rot90(image, 2)``."""
    return np.ascontiguousarray(check_rgb_uint8(image)[::-1, ::-1])


def jpeg_bytes(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """The image encoded as JPEG at ``quality`` with 4:2:0 chroma (PIL's libjpeg)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(check_rgb_uint8(image), mode="RGB").save(buffer, format="JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def jpeg_decode(data: bytes, *, fast_idct: bool = True) -> np.ndarray:
    """JPEG bytes -> H x W x 3 uint8 RGB with libjpeg-turbo (simplejpeg), fancy upsampling.

    ``fast_idct=True``: the fast integer IDCT (``JDCT_IFAST``), TF's default decode;
    ``fast_idct=False``: the accurate one (``JDCT_ISLOW``), what PIL and TF's ``INTEGER_ACCURATE`` give.
    """
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast_idct, fastupsample=False)


def jpeg_roundtrip(image: np.ndarray, quality: int = JPEG_QUALITY, *, fast_idct: bool = True) -> np.ndarray:
    """Encode to JPEG at ``quality`` (4:2:0 chroma) and decode back to uint8 RGB (:func:`jpeg_decode`)."""
    return jpeg_decode(jpeg_bytes(image, quality), fast_idct=fast_idct)


LANCZOS_RADIUS = np.float32(3.0)
_PI = np.float32(3.14159265359)  # TF's kPI, as float32


@functools.cache
def _sinf() -> Any:
    """The C library's single-precision ``sinf``: what TF's kernel calls (``std::sin(float)``).

    Not ``np.sin`` (its float32 loops differ between CPUs) nor a float64 sine rounded to float32 (the
    correctly rounded value: it differs from glibc's ``sinf`` by one ulp at some arguments, and one such
    weight renormalizes its whole row: 12 values of the 12 reference frames then round the other way)."""
    import ctypes
    import ctypes.util

    libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    libm.sinf.restype, libm.sinf.argtypes = ctypes.c_float, [ctypes.c_float]
    return np.frompyfunc(lambda value: libm.sinf(float(value)), 1, 1)


def _lanczos3(t: np.ndarray) -> np.ndarray:
    """TF's ``LanczosKernelFunc(3)`` on float32 ``|t|``: 3 sin(pi t) sin(pi t / 3) / (pi^2 t^2), 1 at t <= 1e-3, 0 past 3."""
    pi_t = _PI * t
    sin_a = _sinf()(pi_t).astype(np.float32)
    sin_b = _sinf()(pi_t / LANCZOS_RADIUS).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = LANCZOS_RADIUS * sin_a * sin_b / (_PI * _PI * t * t)
    return np.where(t > LANCZOS_RADIUS, np.float32(0.0), np.where(t <= np.float32(1e-3), np.float32(1.0), value))


class Spans(NamedTuple):
    """One axis of TF's resize: output pixel ``x`` is ``sum_k weights[x, k] * input[sources[x, k]]``,
    added in order of ``k`` (ascending source index). ``sources`` [out, span] int64, clamped to the
    image; ``weights`` [out, span] float32, 0 past the pixel's own span. Read-only."""

    sources: np.ndarray
    weights: np.ndarray


@functools.lru_cache(maxsize=8)
def lanczos3_spans(in_size: int, out_size: int) -> Spans:
    """TF's antialiased Lanczos-3 spans along one axis, in float32 as ``scale_and_translate_op.cc``
    ``ComputeSpansCore`` computes them (translation 0): output pixel x samples at s = (x + 0.5) * inv
    with inv = float32(1 / (out / in)); kernel scale k = max(inv, 1); source pixels ceil(s - 3k - 0.5)
    .. floor(s + 3k - 0.5), clamped to the image, weigh lanczos3(|(j + 0.5 - s) * float32(1 / k)|)
    (TF multiplies by the inverse; dividing by k moves some weights by an ulp), normalized by
    multiplying with 1 / (their sum, added in order)."""
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0 / float(scale))
    kernel_scale = max(inv_scale, np.float32(1.0))
    one_over_kernel_scale = np.float32(1.0) / kernel_scale
    reach = LANCZOS_RADIUS * kernel_scale
    sample = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * inv_scale
    start = np.clip(np.ceil(sample - reach - np.float32(0.5)).astype(np.int64), 0, in_size - 1)
    end = np.clip(np.floor(sample + reach - np.float32(0.5)).astype(np.int64), 0, in_size - 1) + 1
    source = start[:, None] + np.arange(int((end - start).max()))[None, :]
    inside = source < end[:, None]
    position = source.astype(np.float32) + np.float32(0.5) - sample[:, None]
    weights = np.where(inside, _lanczos3(np.abs(position * one_over_kernel_scale)), np.float32(0.0))
    total = np.zeros(out_size, np.float32)
    for k in range(weights.shape[1]):  # TF adds the span's weights one by one
        total = total + weights[:, k]
    weights = weights * (np.float32(1.0) / total)[:, None]
    sources = np.minimum(source, in_size - 1)
    sources.flags.writeable = weights.flags.writeable = False
    return Spans(sources, weights)


def _gather_add(pixels: np.ndarray, spans: Spans, axis: int) -> np.ndarray:
    """``scale_and_translate``'s gather along ``axis`` (0: rows, 1: columns) of float32 ``pixels``:
    start from 0 and add ``weight * source`` tap by tap, each product and sum rounded to float32."""
    shape = [1, 1, 1]
    out_size = spans.sources.shape[0]
    shape[axis] = out_size
    total = np.zeros(pixels.shape[:axis] + (out_size,) + pixels.shape[axis + 1 :], np.float32)
    for k in range(spans.sources.shape[1]):
        total += spans.weights[:, k].reshape(shape) * np.take(pixels, spans.sources[:, k], axis=axis)
    return total


def resize_lanczos(image: np.ndarray, size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
    """TF's ``resize(method="lanczos3", antialias=True)`` to ``size`` x ``size``, then ``round`` (half to
    even) and ``clip(0, 255)``; uint8 in and out.

    TF's own arithmetic, rows then columns (``GatherRows``, ``GatherColumns``): float32, each output a
    sum over its span in a fixed order, so the pixels are the same on every CPU. (A matrix product
    sums in the order of the BLAS kernel, which depends on the CPU: 40 values of the 12 reference
    frames off by one against TF, and other values on an AVX-512 machine than on an AVX2 one.)"""
    pixels = check_rgb_uint8(image).astype(np.float32)
    height, width, _ = pixels.shape
    rows = _gather_add(pixels, lanczos3_spans(height, size), axis=0)
    resized = _gather_add(rows, lanczos3_spans(width, size), axis=1)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def center_crop_box(area: float = CENTER_CROP_AREA) -> tuple[float, float, float, float]:
    """Normalized ``(y1, x1, y2, x2)`` of the centred square box covering ``area`` of the image,
    computed in float32 as the reference does (side ``clip(sqrt(area), 0, 1)``, offset ``(1 - side) / 2``)."""
    side = np.clip(np.sqrt(np.float32(area)), np.float32(0.0), np.float32(1.0))
    offset = (np.float32(1.0) - side) / np.float32(2.0)
    end = offset + side
    return (float(offset), float(offset), float(end), float(end))


def _sample_coords(start: float, end: float, in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tf.image.crop_and_resize`` source coordinates (float32): low index, high index, lerp weight."""
    start32 = np.float32(start)
    scale = (np.float32(end) - start32) * np.float32(in_size - 1) / np.float32(out_size - 1)
    coords = start32 * np.float32(in_size - 1) + np.arange(out_size, dtype=np.float32) * scale
    low = np.floor(coords).astype(np.int64)
    high = np.ceil(coords).astype(np.int64)
    return np.clip(low, 0, in_size - 1), np.clip(high, 0, in_size - 1), (coords - low).astype(np.float32)


def center_crop(image: np.ndarray, area: float = CENTER_CROP_AREA, size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
    """Crop the centred ``area`` box and resize it to ``size`` x ``size`` bilinearly (uint8 in and out).

    In float32 as ``crop_and_resize``: each sample is ``x / 255`` of its four neighbours, lerped along x
    (``left + (right - left) * x_lerp``), then along y, clipped to [0, 1]; out ``trunc(v * 255.5)``.
    The neighbours are picked as uint8 and converted after (the same values, a quarter of the bytes
    moved), the arithmetic done in place."""
    pixels = check_rgb_uint8(image)
    y1, x1, y2, x2 = center_crop_box(area)
    top, bottom, y_lerp = _sample_coords(y1, y2, pixels.shape[0], size)
    left, right, x_lerp = _sample_coords(x1, x2, pixels.shape[1], size)
    to_unit, x_weight = np.float32(1.0 / 255.0), x_lerp[None, :, None]

    def lerp_along_x(rows: np.ndarray) -> np.ndarray:
        picked = pixels[rows]
        low = picked[:, left].astype(np.float32)
        low *= to_unit
        high = picked[:, right].astype(np.float32)
        high *= to_unit
        high -= low
        high *= x_weight
        high += low
        return high

    upper = lerp_along_x(top)
    cropped = lerp_along_x(bottom)
    cropped -= upper
    cropped *= y_lerp[:, None, None]
    cropped += upper
    np.clip(cropped, 0.0, 1.0, out=cropped)
    cropped *= np.float32(255.5)
    return np.clip(np.trunc(cropped), 0, 255).astype(np.uint8)


def model_image(upright: np.ndarray, *, center_crop_enabled: bool = True) -> np.ndarray:
    """An upright H x W x 3 uint8 image -> the 224 x 224 x 3 uint8 model image (steps 2-4)."""
    image = resize_lanczos(jpeg_roundtrip(check_rgb_uint8(upright, "upright image")))
    return center_crop(image) if center_crop_enabled else image


def libero_image(agentview: np.ndarray, *, center_crop_enabled: bool = True) -> np.ndarray:
    """LIBERO ``agentview_image`` (H x W x 3 uint8, as rendered) -> the 224 x 224 x 3 uint8 model image."""
    return model_image(rotate_180(check_rgb_uint8(agentview, "agentview image")), center_crop_enabled=center_crop_enabled)
