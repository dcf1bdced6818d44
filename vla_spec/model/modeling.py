"""An OpenVLA checkpoint end to end: ``predict_action``, one way through the spine.

:class:`OpenVLA` is the checkpoint: the network (:mod:`vla_spec.model.network`, whose weights it
holds) with what the checkpoint owns around it, each a stage of its own::

    images --processor.resize--> uint8 pixels --network.encode_images--> patches   (queued on the device)
    instructions --processor.prompt_ids--> prompt ids              (on the host, while the towers run)
    patches, prompt ids --network.prefix_of_patches--> prefix --decoder--> token ids, margins
        --action_processor(unnorm_key)--> ActionPrediction         (vla_spec.model.processor, .network, .decoding; vla_spec.actions)

The decoder is swappable: ``model.decoder`` (default :func:`greedy_decode`) or the ``decoder``
argument of :meth:`OpenVLA.predict_action`, with the signature of
:class:`vla_spec.model.decoding.Decoder`. :meth:`OpenVLA.prefix` returns the decoder's inputs.
A batch of N gives the tokens of N single calls (up to float near-ties).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from vla_spec.actions import ActionPrediction, ActionProcessor
from vla_spec.model.config import OpenVLAConfig
from vla_spec.model.decoding import Decoder, greedy_decode
from vla_spec.model.network import OpenVLANetwork, Prefix
from vla_spec.model.processor import ImageLike, OpenVLAProcessor, pixel_values_from_uint8, pixel_values_on
from vla_spec.normalization import NormStats
from vla_spec.tokens import ActionTokenizer

if TYPE_CHECKING:
    from vla_spec.model.fast_decoding import GraphedCall


class OpenVLA(OpenVLANetwork):
    """OpenVLA-7B (or a tiny model of the same architecture): the network, its input processor
    (``processor``: its tokenizer, 224 px), its action tokenizer (at ``config.text_vocab_size``)
    and statistics (``norm_stats``), and a ``decoder``.

    ``pixels_on_device`` (default True): the resized uint8 images go to the model's device and are
    normalized there, in the model's dtype (:func:`~vla_spec.model.processor.pixel_values_on`); False builds the
    float32 ``pixel_values`` on the CPU first, as the reference does. Both give the same values.

    ``call_runner`` (default None; set by :func:`vla_spec.model.fast_decoding.accelerate`): where it
    applies (:meth:`GraphedCall.applies`), :meth:`predict_action` hands it the uint8 images and the
    prompt ids and it returns the decoder's result, all device work in one CUDA graph."""

    def __init__(self, config: OpenVLAConfig, tokenizer: Any = None) -> None:
        super().__init__(config)
        self.processor = OpenVLAProcessor(tokenizer, config.image_size)
        self.action_tokenizer = ActionTokenizer(vocab_size=config.text_vocab_size, n_bins=config.n_action_bins)
        self.decoder: Decoder = greedy_decode
        self.pixels_on_device = True
        self.call_runner: GraphedCall | None = None

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's text tokenizer (the processor's)."""
        return self.processor.tokenizer

    @property
    def norm_stats(self) -> Mapping[str, NormStats]:
        """The statistics by ``unnorm_key`` (``dataset_statistics.json`` when the folder has one)."""
        return self.config.norm_stats

    def action_processor(self, unnorm_key: str | None) -> ActionProcessor:
        """The checkpoint's output transform for ``unnorm_key`` (resolved as ``_check_unnorm_key``)."""
        return ActionProcessor.select(self.config.norm_stats, unnorm_key, self.action_tokenizer)

    @torch.inference_mode()
    def prefix(self, images: ImageLike | Sequence[ImageLike], instructions: str | Sequence[str]) -> Prefix:
        """The decoder input for a batch (one image per instruction; a single pair is a batch of 1)."""
        return self._prefix(*self.processor.pairs(images, instructions))

    @torch.inference_mode()
    def _prefix(self, images: list[ImageLike], instructions: list[str]) -> Prefix:
        """The towers are queued on the device first; the host tokenizes while they run."""
        pixels = self.processor.resize(images, pin_memory=self.pixels_on_device and self.device.type == "cuda")
        pixel_values = pixel_values_on(pixels, self.device, self.dtype) if self.pixels_on_device else (
            pixel_values_from_uint8(pixels))
        patches = self.encode_images(pixel_values)
        return self.prefix_of_patches(patches, self.processor.prompt_ids(instructions))

    def predict_action(
        self,
        images: ImageLike | Sequence[ImageLike],
        instructions: str | Sequence[str],
        unnorm_key: str | None = None,
        *,
        decoder: Decoder | None = None,
    ) -> ActionPrediction:
        """Images (H x W x 3 uint8 RGB, upright as the model was trained) + instructions -> actions.

        ``images``: one image (numpy H x W x 3 uint8 or PIL), a list of them, or a [B, H, W, 3]
        array; ``instructions``: one string or one per image. For LIBERO observations apply
        :func:`vla_spec.images.libero_image` first (rotation, JPEG, resize, crop).

        ``unnorm_key`` selects the statistics (:meth:`action_processor`); ``decoder`` overrides
        ``self.decoder`` for this call.
        """
        outputs = self.action_processor(unnorm_key)
        image_list, instruction_list = self.processor.pairs(images, instructions)
        runner = self.call_runner if decoder is None else None
        if runner is not None and runner.applies(len(image_list)):
            pixels = self.processor.resize(image_list)
            result = runner(pixels, self.processor.prompt_ids(instruction_list), outputs.action_dim)
        else:
            prefix = self._prefix(image_list, instruction_list)
            result = (decoder or self.decoder)(
                self.language_model, prefix.inputs_embeds, prefix.attention_mask, outputs.action_dim
            )
        top_logits = None if result.top_logits is None else result.top_logits.detach().cpu().float().numpy()
        return outputs.prediction(
            result.token_ids.detach().cpu().numpy(), result.margins.detach().cpu().float().numpy(), top_logits
        )
