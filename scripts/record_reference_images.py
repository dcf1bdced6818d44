"""Record TensorFlow's LIBERO image path on real LIBERO frames, and measure ours against it (issue 12).

Three steps, each in the environment that has what it needs (files: ``tests/reference_images.py``):

  render      (sim stack, MUJOCO_GL=egl)  render the frames -> golden/reference_images/raw/*.png
  tensorflow  (tox -e reference-images)   TF's path on the raw frames -> tf_no_crop/, tf_center_crop/
  measure     (tox -e reference-images)   a table of how far an image path is from TF's, stage by stage,
                                          for the project's path ("new") and PIL's decode + LANCZOS ("old")

The TF path is the reference's code: ``get_libero_image`` (``img[::-1, ::-1]``), ``resize_image``
(``encode_jpeg``, ``decode_image``, ``resize(lanczos3, antialias=True)``, round, clip, uint8) and
``get_vla_action``'s centre crop (``convert_image_dtype``, ``crop_and_resize``, clip, back to uint8).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reference_images import (  # noqa: E402
    FRAMES,
    REFERENCE_DIR,
    frame_name,
    pil_accurate_roundtrip,
    pil_lanczos,
    read_png,
    render_frame,
    write_png,
)
from vla_spec import images  # noqa: E402

RESIZE = (images.MODEL_IMAGE_SIZE, images.MODEL_IMAGE_SIZE)


def render() -> None:
    import mujoco

    for suite, task_id, init in FRAMES:
        write_png("raw", frame_name(suite, task_id, init), render_frame(suite, task_id, init))
    _update_manifest({"frames": [frame_name(*frame) for frame in FRAMES], "mujoco": mujoco.__version__})


def tf_jpeg_roundtrip(upright: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    data = tf.image.encode_jpeg(upright)
    return tf.io.decode_image(data, expand_animations=False, dtype=tf.uint8).numpy()


def tf_resize(decoded: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    resized = tf.image.resize(decoded, RESIZE, method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def tf_center_crop(image: np.ndarray, crop_scale: float = images.CENTER_CROP_AREA) -> np.ndarray:
    import tensorflow as tf

    pixels = tf.image.convert_image_dtype(tf.convert_to_tensor(image), tf.float32)[None]
    side = tf.reshape(tf.clip_by_value(tf.sqrt(crop_scale), 0, 1), shape=(1,))
    offset = (1 - side) / 2
    boxes = tf.stack([offset, offset, offset + side, offset + side], axis=1)
    cropped = tf.clip_by_value(tf.image.crop_and_resize(pixels, boxes, tf.range(1), RESIZE)[0], 0, 1)
    return tf.image.convert_image_dtype(cropped, tf.uint8, saturate=True).numpy()


def record_tensorflow() -> None:
    import tensorflow as tf

    for frame in FRAMES:
        name = frame_name(*frame)
        no_crop = tf_resize(tf_jpeg_roundtrip(np.ascontiguousarray(read_png("raw", name)[::-1, ::-1])))
        write_png("tf_no_crop", name, no_crop)
        write_png("tf_center_crop", name, tf_center_crop(no_crop))
    _update_manifest({"tensorflow": tf.__version__, "numpy": np.__version__})


def _update_manifest(entries: dict[str, object]) -> None:
    path = REFERENCE_DIR / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    manifest.update(entries)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


PATHS = {
    "new": (images.jpeg_roundtrip, images.resize_lanczos),
    "old": (pil_accurate_roundtrip, pil_lanczos),
}


def _stats(ours: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    diff = np.concatenate([o.astype(np.int16).ravel() - r.astype(np.int16).ravel() for o, r in zip(ours, reference)])
    return {
        "mean_abs": float(np.abs(diff).mean()),
        "percent_differing": 100.0 * np.count_nonzero(diff) / diff.size,
        "max": int(np.abs(diff).max()),
        "signed_mean": float(diff.mean()),
    }


def measure() -> None:
    uprights = [np.ascontiguousarray(read_png("raw", frame_name(*f))[::-1, ::-1]) for f in FRAMES]
    tf_decoded = [tf_jpeg_roundtrip(u) for u in uprights]
    tf_no_crop = [tf_resize(d) for d in tf_decoded]
    tf_crop = [tf_center_crop(r) for r in tf_no_crop]
    print(f"{len(FRAMES)} LIBERO agentview frames ({', '.join(sorted({f[0] for f in FRAMES}))}); differences to TensorFlow's path")
    print("| path | stage | mean abs diff | values differing | max | signed mean |")
    print("|---|---|---:|---:|---:|---:|")
    for label, (roundtrip, resize) in PATHS.items():
        decoded = [roundtrip(u) for u in uprights]
        no_crop = [resize(d) for d in decoded]
        rows = {
            "whole path, no crop": (no_crop, tf_no_crop),
            "whole path, centre crop": ([images.center_crop(r) for r in no_crop], tf_crop),
            "JPEG round trip alone": (decoded, tf_decoded),
            "resize alone (TF's decoded input)": ([resize(d) for d in tf_decoded], [tf_resize(d) for d in tf_decoded]),
        }
        for stage, (ours, reference) in rows.items():
            s = _stats(ours, reference)
            print(
                f"| {label} | {stage} | {s['mean_abs']:.5f} | {s['percent_differing']:.4f} % | {s['max']} | {s['signed_mean']:+.5f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("render", "tensorflow", "measure"))
    step = parser.parse_args().step
    {"render": render, "tensorflow": record_tensorflow, "measure": measure}[step]()


if __name__ == "__main__":
    main()
