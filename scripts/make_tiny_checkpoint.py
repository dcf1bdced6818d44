"""Build the tiny OpenVLA test checkpoint in the official Hugging Face format.

    python scripts/make_tiny_checkpoint.py [--out golden/tiny-openvla] [--steps 300]
    python scripts/make_tiny_checkpoint.py --images-only   # just the fixture PNGs in golden/images

What it writes (same files and tensor names as ``openvla/openvla-7b-finetuned-libero-*``):
``config.json`` (``model_type "openvla"``, the four LIBERO ``norm_stats`` shipped in
``vla_spec/stats``, plus the documented ``vla_spec_timm_overrides`` extension that shrinks the timm
towers), ``model.safetensors.index.json`` + two bfloat16 shards, ``preprocessor_config.json`` and a
tokenizer (``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``).

Sizes: DINOv2-like tower (class + 4 register tokens, LayerScale) and SigLIP-like tower (no class
token, attention-pool head), both patch 14 at 224 px (256 patches) but width 32, depth 2; a
2-layer Llama of hidden size 32 with the real padded vocabulary (32064 = 32000 + 64), so the
action-token ids are the real ones (31744..31999).

The tokenizer is OUR OWN word-level tokenizer, not Llama-2's (which cannot be redistributed): it
knows the prompt template and LIBERO-style instruction words. It keeps the ids that matter to the
spec (BOS 1, EOS 2, "▁" 29871, ``<PAD>`` 32000, unknown 0); every other id differs from Llama-2's.

Fitting: a random tiny model emits the same token for every input, so goldens of it would be
blind. The model is trained briefly (a few hundred CPU steps, fixed seed) so that the 7 action
tokens depend on the image (mean red/green/blue, left-right and top-bottom brightness contrast)
and on the instruction (two dims hashed from its text). The targets are arbitrary; the point is
only that different inputs give different tokens.
"""

from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from vla_spec.model.processor import process_images
from vla_spec.model.config import OpenVLAConfig
from vla_spec.model.export import llama_text_config, openvla_config, save_checkpoint, word_tokenizer
from vla_spec.model.modeling import OpenVLA
from vla_spec.model.tokenizer import prompt_ids
from vla_spec.normalization import shipped_entries

SEED = 0
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
TRAIN_INSTRUCTIONS = (
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the alphabet soup and place it in the basket",
    "open the middle drawer of the cabinet",
    "put the bowl on the stove",
    "put the wine bottle on top of the cabinet",
    "turn on the stove",
    "put both the alphabet soup and the tomato sauce in the basket",
    "pick up the cream cheese and place it in the basket",
    "put the apple in the bowl",
    "push the plate to the front of the stove",
)
EXTRA_WORDS = "in what action should the robot take to out cream cheese ketchup milk butter orange juice salad dressing bbq sauce mug microwave close top bottom left right next of".split()
TEXT_CONFIG = llama_text_config(hidden_size=32, intermediate_size=64, layers=2, heads=4)
TIMM_OVERRIDES = [
    {"embed_dim": 32, "depth": 2, "num_heads": 2},
    {"embed_dim": 32, "depth": 2, "num_heads": 2},
]
def config_dict() -> dict:
    """``config.json`` in the official layout (plus the tower-size extension)."""
    return openvla_config(TEXT_CONFIG, TIMM_OVERRIDES, shipped_entries(SUITES))


def synthetic_images(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random scenes (256 x 256 x 3 uint8): a coloured background, a few coloured boxes, noise."""
    images = []
    for _ in range(count):
        image = np.empty((256, 256, 3), dtype=np.float32)
        image[:] = rng.uniform(0, 255, size=3)
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0, 200, size=2)
            h, w = rng.integers(20, 128, size=2)
            image[y : y + h, x : x + w] = rng.uniform(0, 255, size=3)
        image += rng.normal(0, 8, size=image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def image_targets(image: np.ndarray) -> list[float]:
    """Five normalized targets in [-1, 1] from colour statistics of an H x W x 3 uint8 image."""
    pixels = image.astype(np.float64) / 255.0
    gray = pixels.mean(axis=2)
    half = gray.shape[1] // 2
    return [
        *(2.0 * pixels[..., c].mean() - 1.0 for c in range(3)),
        float(np.clip(4.0 * (gray[:, :half].mean() - gray[:, half:].mean()), -1, 1)),
        float(np.clip(4.0 * (gray[: gray.shape[0] // 2].mean() - gray[gray.shape[0] // 2 :].mean()), -1, 1)),
    ]


def instruction_targets(instruction: str) -> list[float]:
    """Two normalized targets in [-1, 1] hashed from the instruction text."""
    digest = zlib.crc32(instruction.encode("utf-8"))
    return [((digest >> shift) & 0xFF) / 127.5 - 1.0 for shift in (0, 8)]


def quantize(values: list[float], levels: int = 9) -> np.ndarray:
    """Snap to ``levels`` evenly spaced values in [-1, 1] (coarse targets are easy to fit)."""
    return np.round((np.asarray(values) + 1.0) / 2.0 * (levels - 1)) / (levels - 1) * 2.0 - 1.0


def fit(model: OpenVLA, steps: int, batch_size: int, seed: int) -> None:
    """Teacher-forced cross-entropy on the 7 action tokens (the reference's training loss)."""
    rng = np.random.default_rng(seed)
    pool = synthetic_images(192, rng)
    pool += [np.zeros((256, 256, 3), np.uint8), np.full((256, 256, 3), 255, np.uint8)]
    pixels = process_images(pool)
    image_part = [image_targets(image) for image in pool]
    text_ids = [prompt_ids(model.tokenizer, text) for text in TRAIN_INSTRUCTIONS]
    text_part = [instruction_targets(text) for text in TRAIN_INSTRUCTIONS]
    tokens = model.action_tokenizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    start = time.time()
    for step in range(steps):
        images = rng.integers(0, len(pool), size=batch_size)
        texts = rng.integers(0, len(TRAIN_INSTRUCTIONS), size=batch_size)
        targets = torch.as_tensor(
            np.stack([tokens.encode(quantize(image_part[i] + text_part[t])) for i, t in zip(images, texts)])
        )
        prefix = model.embed_prefix(pixels[images], [text_ids[t] for t in texts])
        action_embeds = model.language_model.get_input_embeddings()(targets[:, :-1])
        embeds = torch.cat([prefix.inputs_embeds, action_embeds], dim=1)
        mask = torch.cat([prefix.attention_mask, torch.ones_like(targets[:, :-1])], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        hidden = model.language_model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        prediction = model.language_model.lm_head(hidden.last_hidden_state[:, prefix.inputs_embeds.shape[1] - 1 :, :])
        loss = torch.nn.functional.cross_entropy(prediction.reshape(-1, prediction.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0 or step == steps - 1:
            accuracy = (prediction.argmax(-1) == targets).float().mean().item()
            print(f"step {step:4d}  loss {loss.item():.3f}  token acc {accuracy:.2f}  {time.time() - start:.0f}s")
    model.eval()


def fixture_images() -> dict[str, np.ndarray]:
    """The fixed 256 x 256 x 3 uint8 test images (LIBERO render size), saved as PNG in golden/images."""
    y, x = np.mgrid[0:256, 0:256]
    gradient = np.stack([x, y, np.full_like(x, 64)], axis=-1).astype(np.uint8)
    scene = np.empty((256, 256, 3), np.uint8)
    scene[:] = (150, 120, 90)  # a wooden table
    scene[:96] = (200, 205, 210)  # a wall
    scene[120:170, 40:100] = (30, 30, 30)  # a black bowl
    scene[140:200, 150:230] = (220, 220, 220)  # a plate
    scene[60:110, 180:200] = (180, 30, 40)  # a red bottle
    marker = np.zeros((256, 256, 3), np.uint8)
    marker[:64, :64] = (255, 0, 0)  # red top-left corner: tells rotations and flips apart
    marker[200:, 100:200] = (0, 0, 255)
    return {
        "black": np.zeros((256, 256, 3), np.uint8),
        "white": np.full((256, 256, 3), 255, np.uint8),
        "gradient": gradient,
        "scene": scene,
        "marker": marker,
    }


def write_fixture_images(folder: Path) -> None:
    """Write :func:`fixture_images` as ``<name>.png``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, image in fixture_images().items():
        Image.fromarray(image, mode="RGB").save(folder / f"{name}.png", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "golden" / "tiny-openvla")
    parser.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[1] / "golden" / "images")
    parser.add_argument("--images-only", action="store_true", help="only (re)write the fixture PNGs")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    write_fixture_images(args.images)
    if args.images_only:
        return
    torch.manual_seed(SEED)
    config = OpenVLAConfig.from_dict(config_dict())
    model = OpenVLA(config, tokenizer=word_tokenizer(TRAIN_INSTRUCTIONS, EXTRA_WORDS))
    fit(model, args.steps, args.batch_size, SEED)
    save_checkpoint(model, model.tokenizer, config_dict(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
