"""``backend="hf-remote"``: the reference implementation, behind the native ``predict_action``.

For users who have the released checkpoint's remote code and an environment it runs in (the
reference pins transformers 4.40.1 and timm 0.9.10; on transformers >= 4.50 it silently ignores
the image, openvla issue #346). It loads
``AutoModelForVision2Seq.from_pretrained(path, trust_remote_code=True, torch_dtype=bfloat16)`` and
``AutoProcessor`` ONLY when asked, and mirrors the reference ``predict_action`` (append 29871,
greedy ``generate`` of 7 tokens) but also returns the token ids and margins, one sample at a time
(the reference refuses batches). Its images are PIL RGB images made from H x W x 3 uint8 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_spec.actions import ActionPrediction, ActionProcessor
from vla_spec.model.decoding import greedy_step
from vla_spec.normalization import parse_norm_stats, read_norm_stats_file
from vla_spec.prompt import SPECIAL_EMPTY_TOKEN_ID, build_prompt
from vla_spec.tokens import ActionTokenizer


def _auto_model_class() -> Any:
    import transformers

    for name in ("AutoModelForVision2Seq", "AutoModelForImageTextToText"):
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise ImportError("transformers has neither AutoModelForVision2Seq nor AutoModelForImageTextToText")


class HFRemoteOpenVLA:
    """The reference remote-code model with :meth:`predict_action` like :class:`OpenVLA`'s."""

    def __init__(self, path: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cuda") -> None:
        from transformers import AutoProcessor

        folder = Path(path)
        self.device = torch.device(device)
        self.dtype = dtype
        self.processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
        self.model = _auto_model_class().from_pretrained(
            str(folder), torch_dtype=dtype, trust_remote_code=True, low_cpu_mem_usage=True
        ).to(self.device).eval()
        stats_file = folder / "dataset_statistics.json"
        self.norm_stats = read_norm_stats_file(stats_file) if stats_file.is_file() else parse_norm_stats(self.model.norm_stats)
        text_vocab = self.model.config.text_config.vocab_size - self.model.config.pad_to_multiple_of
        self.action_tokenizer = ActionTokenizer(vocab_size=text_vocab)

    def action_processor(self, unnorm_key: str | None) -> ActionProcessor:
        """The output transform for ``unnorm_key``, as :meth:`vla_spec.model.modeling.OpenVLA.action_processor`."""
        return ActionProcessor.select(self.norm_stats, unnorm_key, self.action_tokenizer)

    @torch.inference_mode()
    def _one(self, image: np.ndarray, instruction: str, n_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sample's ids, margins and top-1 logits [n_tokens]."""
        from PIL import Image

        inputs = self.processor(build_prompt(instruction), Image.fromarray(image, mode="RGB")).to(self.device, dtype=self.dtype)
        input_ids = inputs["input_ids"]
        if int(input_ids[0, -1]) != SPECIAL_EMPTY_TOKEN_ID:
            empty = torch.tensor([[SPECIAL_EMPTY_TOKEN_ID]], dtype=input_ids.dtype, device=input_ids.device)
            input_ids = torch.cat([input_ids, empty], dim=1)
        out = self.model.generate(
            input_ids=input_ids,
            pixel_values=inputs["pixel_values"],
            max_new_tokens=n_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        ids = out.sequences[0, -n_tokens:].cpu().numpy().astype(np.int64)
        steps = [greedy_step(score) for score in out.scores]
        margins = np.array([float(margin[0]) for _, margin, _ in steps], dtype=np.float32)
        top_logits = np.array([float(top[0]) for _, _, top in steps], dtype=np.float32)
        return ids, margins, top_logits

    def predict_action(
        self, images: np.ndarray | Sequence[np.ndarray], instructions: str | Sequence[str], unnorm_key: str | None = None
    ) -> ActionPrediction:
        """Same contract as :meth:`vla_spec.model.modeling.OpenVLA.predict_action` (no ``decoder``)."""
        image_list = [images] if isinstance(images, np.ndarray) else list(images)
        text_list = [instructions] if isinstance(instructions, str) else list(instructions)
        if len(image_list) != len(text_list):
            raise ValueError(f"{len(image_list)} images but {len(text_list)} instructions: give one per image")
        outputs = self.action_processor(unnorm_key)
        rows = [self._one(image, text, outputs.action_dim) for image, text in zip(image_list, text_list)]
        ids, margins, top_logits = (np.stack(column) for column in zip(*rows))
        return outputs.prediction(ids, margins, top_logits)
