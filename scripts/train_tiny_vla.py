"""Train a tiny OpenVLA on scripted-expert LIBERO demonstrations, as OpenVLA was fine-tuned.

    # on this machine: pack the HDF5 demos (vla-spec demos) into JPEG shards of <= 60 MB
    python scripts/train_tiny_vla.py pack --demos data/demos/libero_object --out transport/shard
    # where the GPU is (or here, slowly): train from the shards or straight from the demos
    python scripts/train_tiny_vla.py train --data transport/shard-*.npz --out golden/tiny-vla-libero-object \\
        --steps 6000 --device cuda

The recipe (OpenVLA's fine-tuning at tiny scale; every piece is the package's own code):

* Architecture: the exact official one (:class:`vla_spec.model.OpenVLA`: timm DINOv2 + SigLIP
  towers, fused GELU projector, transformers Llama with the padded 32064 vocabulary) at tiny
  widths, from scratch; saved in the official HF format (:mod:`vla_spec.model.export`).
* Input: ``In: What action should the robot take to {instruction}?\\nOut:`` with BOS and the
  trailing 29871 (:func:`vla_spec.model.tokenizer.prompt_ids`), the image's 256 patch embeddings
  after BOS, the prefix left-padded exactly as ``predict_action`` pads a batch.
* Target: the 7 ids of ``ActionProcessor.encode(action)`` (BOUNDS_Q99 ``normalize``, then the
  checkpoint's action tokenizer: :mod:`vla_spec.actions`) then EOS; loss on
  those 8 positions only (teacher forcing). ``stats`` (BOUNDS_Q99: q01/q99, mask = all but the
  gripper) come from the training actions (:func:`vla_spec.normalization.dataset_statistics`) and
  are stored in ``norm_stats`` under ``--unnorm-key`` (default: the suite name, the key the LIBERO
  evaluation looks up). ``--extra-stats`` copies shipped entries beside it (default ``bridge_orig``,
  as the base OpenVLA checkpoint carries its pretraining keys: the wrong-key control decodes with it).
* Images: the stored 224 px demo frames (the LIBERO image path before the crop); per sample a
  random square crop of 0.9 of the area resized back to 224 (bilinear), then brightness (x U[0.8,
  1.2]), contrast and saturation (U[0.8, 1.2]) jitter as OpenVLA's training (its hue jitter of 0.05
  is left out), then :func:`vla_spec.model.processor.tower_inputs`. Evaluation takes the 0.9-area centre crop.
* Optimizer: AdamW (lr ``--lr``, betas 0.9/0.95, weight decay 0.01), linear warm-up then cosine
  decay, bf16 autocast on CUDA, gradient clipping at 1.0. Seeded; ``--state`` saves the full
  training state every ``--save-every`` steps and a rerun resumes from it.

Transport shards (``pack``): ``.npz`` with the frames as JPEG quality 95 bytes (the RLDS storage
OpenVLA trains from) concatenated in ``jpeg`` with ``offsets``, plus ``actions`` (N, 7) float64
(training convention), ``instruction_index``, ``episode_index``, ``instructions`` and ``files``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from vla_spec.actions import ActionProcessor
from vla_spec.model.config import OpenVLAConfig
from vla_spec.model.export import (
    llama_text_config,
    openvla_config,
    save_checkpoint,
    word_tokenizer,
)
from vla_spec.model.modeling import OpenVLA
from vla_spec.model.processor import tower_inputs
from vla_spec.model.tokenizer import prompt_ids
from vla_spec.normalization import dataset_statistics, shipped_entries
from vla_spec.prompt import EOS_TOKEN_ID

CROP_AREA = 0.9
JPEG_QUALITY = 95


# --------------------------------------------------------------------------------------------- data
def pack(demos: Path, out_prefix: Path, max_mb: float, stride: int = 1) -> list[Path]:
    """HDF5 demos -> JPEG shards of at most ``max_mb`` MB each (whole episodes per shard); ``stride``
    keeps every ``stride``-th step of each episode."""
    from vla_spec.demos import demo_files, load_demos
    from vla_spec.images import jpeg_bytes

    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    chunk: dict[str, list] = {"jpeg": [], "actions": [], "instruction": [], "episode": []}
    size = 0
    files = demo_files(demos)
    instructions: dict[str, int] = {}

    def flush() -> None:
        nonlocal size
        if not chunk["jpeg"]:
            return
        lengths = np.array([len(b) for b in chunk["jpeg"]], dtype=np.int64)
        path = out_prefix.parent / f"{out_prefix.name}-{len(written):02d}.npz"
        np.savez(
            path,
            jpeg=np.frombuffer(b"".join(chunk["jpeg"]), dtype=np.uint8),
            offsets=np.concatenate([[0], np.cumsum(lengths)]),
            actions=np.stack(chunk["actions"]),
            instruction_index=np.array(chunk["instruction"], dtype=np.int64),
            episode_index=np.array(chunk["episode"], dtype=np.int64),
            instructions=np.array(list(instructions)),
            files=np.array([str(f) for f in files]),
        )
        written.append(path)
        print(f"{path}: {len(lengths)} frames, {path.stat().st_size / 1e6:.1f} MB")
        for values in chunk.values():
            values.clear()
        size = 0

    for number, path in enumerate(files):
        episode = load_demos([path], stride=stride)
        encoded = [jpeg_bytes(image, JPEG_QUALITY) for image in episode.images]
        episode_bytes = sum(len(b) for b in encoded)
        if size + episode_bytes > max_mb * 1e6:
            flush()
        index = instructions.setdefault(episode.instructions[0], len(instructions))
        chunk["jpeg"].extend(encoded)
        chunk["actions"].extend(episode.actions)
        chunk["instruction"].extend([index] * len(encoded))
        chunk["episode"].extend([number] * len(encoded))
        size += episode_bytes
    flush()
    return written


class Frames:
    """Training frames in memory: uint8 images [N, 224, 224, 3] (on ``device``), actions, prompts."""

    def __init__(self, images: torch.Tensor, actions: np.ndarray, instruction_index: np.ndarray,
                 episode_index: np.ndarray, instructions: list[str]) -> None:
        self.images = images
        self.actions = actions
        self.instruction_index = instruction_index
        self.episode_index = episode_index
        self.instructions = instructions

    @classmethod
    def from_shards(cls, paths: list[Path], device: str) -> "Frames":
        from torchvision.io import decode_jpeg

        images, actions, instruction_index, episode_index = [], [], [], []
        instructions: list[str] = []
        episode_base = 0
        decode_device = "cuda" if device.startswith("cuda") else "cpu"
        for path in paths:
            shard = np.load(path)
            names = [str(n) for n in shard["instructions"]]
            for name in names:
                if name not in instructions:
                    instructions.append(name)
            remap = np.array([instructions.index(n) for n in names], dtype=np.int64)
            jpeg, offsets = torch.from_numpy(shard["jpeg"]), shard["offsets"]
            blobs = [jpeg[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
            for start in range(0, len(blobs), 512):
                decoded = decode_jpeg(blobs[start:start + 512], device=decode_device)
                images.append(torch.stack(decoded).to(device))
            actions.append(shard["actions"])
            instruction_index.append(remap[shard["instruction_index"]])
            episode_index.append(shard["episode_index"] + episode_base)
            episode_base = int(episode_index[-1].max()) + 1
        return cls(torch.cat(images).permute(0, 2, 3, 1).contiguous(), np.concatenate(actions),
                   np.concatenate(instruction_index), np.concatenate(episode_index), instructions)

    def episodes_per_instruction(self, count: int, seed: int) -> np.ndarray:
        """Episode ids: ``count`` drawn at random (seeded) per instruction, for the learning curve."""
        rng = np.random.default_rng([seed, count])
        chosen = []
        for instruction in range(len(self.instructions)):
            episodes = np.unique(self.episode_index[self.instruction_index == instruction])
            if len(episodes) < count:
                raise ValueError(f"--episodes-per-task {count}: instruction {instruction} has only {len(episodes)} episodes")
            chosen.append(rng.choice(episodes, size=count, replace=False))
        return np.concatenate(chosen)

    def subset(self, episodes: np.ndarray) -> "Frames":
        """The frames of ``episodes`` only."""
        rows = np.flatnonzero(np.isin(self.episode_index, episodes))
        return Frames(self.images[torch.from_numpy(rows).to(self.images.device)], self.actions[rows],
                      self.instruction_index[rows], self.episode_index[rows], self.instructions)

    @classmethod
    def from_demos(cls, folder: Path, device: str) -> "Frames":
        from vla_spec.demos import demo_files, load_demos

        demos = load_demos(demo_files(folder))
        return cls(torch.from_numpy(demos.images).to(device), demos.actions, demos.instruction_index,
                   demos.episode_index, list(demos.instructions))


def square_crop(images: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1]: the square of CROP_AREA of the area whose
    centre sits at ``offset`` [B, 2] (normalized x, y; 0 = image centre), resized back bilinearly."""
    pixels = images.permute(0, 3, 1, 2).float() / 255.0
    side = math.sqrt(CROP_AREA)
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = offset
    grid = torch.nn.functional.affine_grid(theta, list(pixels.shape), align_corners=False)
    return torch.nn.functional.grid_sample(pixels, grid, mode="bilinear", align_corners=False)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1]: random 0.9-area crop + colour jitter."""
    batch = images.shape[0]
    offset = (torch.rand(batch, 2, generator=generator, device=images.device) * 2 - 1) * (1 - math.sqrt(CROP_AREA))
    pixels = square_crop(images, offset)

    def factor() -> torch.Tensor:
        return (0.8 + 0.4 * torch.rand(batch, 1, 1, 1, generator=generator, device=images.device))

    pixels = (pixels * factor()).clamp(0, 1)  # brightness
    grey = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = (grey + (pixels - grey) * factor()).clamp(0, 1)  # contrast
    luma = (0.299 * pixels[:, 0:1] + 0.587 * pixels[:, 1:2] + 0.114 * pixels[:, 2:3])
    return (luma + (pixels - luma) * factor()).clamp(0, 1)  # saturation


# -------------------------------------------------------------------------------------------- model
def build_model(args: argparse.Namespace, instructions: list[str], norm_stats: dict) -> tuple[OpenVLA, dict]:
    text = llama_text_config(args.llm_width, args.llm_intermediate, args.llm_layers, args.llm_heads)
    towers = [{"embed_dim": args.tower_width, "depth": args.tower_depth, "num_heads": args.tower_heads}] * 2
    config = openvla_config(text, towers, norm_stats)
    model = OpenVLA(OpenVLAConfig.from_dict(config), tokenizer=word_tokenizer(instructions))
    return model, config


def action_targets(actions: np.ndarray, processor: ActionProcessor) -> torch.Tensor:
    """(N, 7) training-convention actions -> (N, 8) ids: the 7 action tokens, then EOS."""
    ids = processor.encode(actions)
    return torch.from_numpy(np.concatenate([ids, np.full((len(ids), 1), EOS_TOKEN_ID)], axis=1).astype(np.int64))


def loss_and_accuracy(model: OpenVLA, pixel_values: torch.Tensor, prompts: list[list[int]], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced cross-entropy over the 7 action tokens + EOS; per-position token accuracy."""
    from vla_spec.model.decoding import positions_from_mask

    prefix = model.embed_prefix(pixel_values, prompts)
    embeds = torch.cat([prefix.inputs_embeds, model.language_model.get_input_embeddings()(targets[:, :-1])], dim=1)
    mask = torch.cat([prefix.attention_mask, torch.ones_like(targets[:, :-1])], dim=1)
    hidden = model.language_model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask))
    logits = model.language_model.lm_head(hidden.last_hidden_state[:, prefix.inputs_embeds.shape[1] - 1:, :]).float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, (logits.argmax(-1) == targets).float().mean(dim=0)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(args: argparse.Namespace) -> None:
    device = args.device
    torch.manual_seed(args.seed)
    started = time.time()
    if args.data:
        frames = Frames.from_shards(sorted(Path(p) for p in args.data), device)
    else:
        frames = Frames.from_demos(args.demos, device)
    if args.episodes_per_task:
        frames = frames.subset(frames.episodes_per_instruction(args.episodes_per_task, args.seed))
    episodes = np.unique(frames.episode_index)
    rng = np.random.default_rng(args.seed)
    held_out = set(rng.choice(episodes, size=int(len(episodes) * args.val_fraction), replace=False).tolist())
    is_val = np.isin(frames.episode_index, list(held_out))
    train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    stats_entry = dataset_statistics(frames.actions[train_rows], num_trajectories=len(episodes) - len(held_out))
    norm_stats = {args.unnorm_key: stats_entry, **shipped_entries(args.extra_stats)}
    model, config = build_model(args, frames.instructions, norm_stats)
    model.to(device)
    stats = model.norm_stats[args.unnorm_key]
    targets = action_targets(frames.actions, ActionProcessor(stats, model.action_tokenizer)).to(device)
    prompts = [prompt_ids(model.tokenizer, text) for text in frames.instructions]
    params = sum(p.numel() for p in model.parameters())
    print(f"data: {len(frames.actions)} frames, {len(episodes)} episodes ({len(held_out)} held out), "
          f"{len(frames.instructions)} instructions; model {params / 1e6:.2f} M parameters; load {time.time() - started:.0f} s", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    start_step = 0
    if args.state and args.state.exists():
        saved = torch.load(args.state, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"].cpu() if device == "cpu" else saved["generator"])
        start_step = saved["step"]
        print(f"resumed from {args.state} at step {start_step}", flush=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    batch_rng = np.random.default_rng([args.seed, start_step])
    model.train()
    log = []
    tick = time.time()
    completed = start_step
    for step in range(start_step, args.steps):
        rows = batch_rng.choice(train_rows, size=args.batch_size)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        with autocast:
            pixel_values = tower_inputs(augment(frames.images[torch.from_numpy(rows).to(device)], generator))
            loss, accuracy = loss_and_accuracy(model, pixel_values, [prompts[i] for i in frames.instruction_index[rows]], targets[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        completed = step + 1
        last = step == args.steps - 1
        if step % args.log_every == 0 or last:
            entry = {"step": step, "loss": round(loss.item(), 4), "acc": round(accuracy.mean().item(), 3),
                     "lr": learning_rate(step, args), "elapsed_s": round(time.time() - started, 1),
                     "samples_per_s": round(args.log_every * args.batch_size / (time.time() - tick), 1) if step else None}
            if len(val_rows) and (step % (args.log_every * 5) == 0 or last):
                entry.update(evaluate(model, frames, val_rows, prompts, targets, autocast))
            print(json.dumps(entry), flush=True)
            log.append(entry)
            tick = time.time()
        if step + 1 in args.snapshot_at:
            model.eval()
            save_checkpoint(model, model.tokenizer, config, Path(f"{args.out}-step{step + 1}"))
            model.train()
        if args.state and ((step + 1) % args.save_every == 0 or last):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "step": step + 1}, args.state)
        if args.max_minutes and time.time() - started > args.max_minutes * 60:
            print(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    model.eval()
    save_checkpoint(model, model.tokenizer, config, args.out)
    summary = {"frames": int(len(frames.actions)), "episodes": int(len(episodes)), "held_out_episodes": sorted(int(e) for e in held_out),
               "steps": completed, "batch_size": args.batch_size, "wall_s": round(time.time() - started, 1),
               "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "args": {k: str(v) for k, v in vars(args).items()},
               "log": log}
    (Path(args.out) / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} after {summary['wall_s']} s", flush=True)


@torch.no_grad()
def evaluate(model: OpenVLA, frames: Frames, rows: np.ndarray, prompts: list, targets: torch.Tensor, autocast) -> dict:
    """Held-out episodes, centre crop (as evaluation): loss and per-dim token accuracy (teacher forced)."""
    model.eval()
    losses, accuracies = [], []
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        images = frames.images[torch.from_numpy(chunk).to(frames.images.device)]
        pixels = square_crop(images, torch.zeros(len(chunk), 2, device=images.device))
        with autocast:
            loss, accuracy = loss_and_accuracy(model, tower_inputs(pixels), [prompts[i] for i in frames.instruction_index[chunk]], targets[chunk])
        losses.append(loss.item() * len(chunk))
        accuracies.append(accuracy * len(chunk))
    model.train()
    per_dim = (torch.stack(accuracies).sum(0) / len(rows)).tolist()
    return {"val_loss": round(sum(losses) / len(rows), 4), "val_acc_per_token": [round(a, 3) for a in per_dim]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pack_parser = sub.add_parser("pack", help="HDF5 demos -> JPEG shards for transport")
    pack_parser.add_argument("--demos", type=Path, required=True)
    pack_parser.add_argument("--out", type=Path, required=True, help="shard prefix, e.g. transport/shard")
    pack_parser.add_argument("--max-mb", type=float, default=60.0)
    pack_parser.add_argument("--stride", type=int, default=1, help="keep every STRIDE-th step of each episode")
    train_parser = sub.add_parser("train", help="train and write the checkpoint")
    source = train_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", nargs="+", help="JPEG shards from `pack`")
    source.add_argument("--demos", type=Path, help="a folder of HDF5 demos")
    train_parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    train_parser.add_argument("--unnorm-key", default="libero_object")
    train_parser.add_argument("--extra-stats", nargs="*", default=["bridge_orig"],
                              help="shipped statistics also stored in norm_stats (bridge_orig: for the wrong-key control)")
    train_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train_parser.add_argument("--steps", type=int, default=6000)
    train_parser.add_argument("--batch-size", type=int, default=128)
    train_parser.add_argument("--lr", type=float, default=1e-3)
    train_parser.add_argument("--warmup", type=int, default=300)
    train_parser.add_argument("--seed", type=int, default=0)
    train_parser.add_argument("--val-fraction", type=float, default=0.05)
    train_parser.add_argument("--tower-width", type=int, default=128)
    train_parser.add_argument("--tower-depth", type=int, default=4)
    train_parser.add_argument("--tower-heads", type=int, default=4)
    train_parser.add_argument("--llm-width", type=int, default=96)
    train_parser.add_argument("--llm-intermediate", type=int, default=256)
    train_parser.add_argument("--llm-layers", type=int, default=4)
    train_parser.add_argument("--llm-heads", type=int, default=4)
    train_parser.add_argument("--log-every", type=int, default=100)
    train_parser.add_argument("--state", type=Path, help="training-state file: saved periodically, resumed from")
    train_parser.add_argument("--save-every", type=int, default=1000)
    train_parser.add_argument("--snapshot-at", type=int, nargs="*", default=[],
                              help="also write the checkpoint after these steps, to OUT-stepN (learning curve over epochs)")
    train_parser.add_argument("--episodes-per-task", type=int, default=0,
                              help="train on this many episodes per instruction, drawn at random (0: all; learning curve over data)")
    train_parser.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this wall time")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.demos, args.out, args.max_mb, args.stride)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        train(args)


if __name__ == "__main__":
    main()
