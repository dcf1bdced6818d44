"""The vision towers + projector as CUDA graphs: a ``vision_runner`` for the network.

:class:`GraphedVision` is set as ``model.vision_runner`` (:class:`vla_spec.model.network.OpenVLANetwork`
then calls it instead of :meth:`~vla_spec.model.network.OpenVLANetwork.encode_images_eager`): one
captured graph per batch size, optionally of a ``torch.compile``-d function. While any forward hook
is registered on the towers or the projector (as :func:`vla_spec.model.liveness.check_liveness`
does), the eager path runs so that the hooks see their calls.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


_HOOKED = ("vision_backbone.featurizer", "vision_backbone.fused_featurizer", "projector")


def _has_hooks(model: Any) -> bool:
    from torch.nn.modules import module as module_mod

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks for name in _HOOKED for m in model.get_submodule(name).modules()
    )


class GraphedVision:
    """A ``vision_runner``: one CUDA graph per batch size (optionally of a compiled function)."""

    def __init__(self, model: Any, compile_vision: bool, use_cuda_graphs: bool, warmup: int = 2) -> None:
        self.model = model
        self.eager: Callable[[torch.Tensor], torch.Tensor] = model.encode_images_eager
        self.fn = torch.compile(self.eager, dynamic=False) if compile_vision else self.eager
        self.use_cuda_graphs = use_cuda_graphs
        self.warmup = warmup
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        if _has_hooks(model):
            return self.eager(pixel_values)
        pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
        if not (self.use_cuda_graphs and pixel_values.is_cuda):
            return self.fn(pixel_values)
        batch = pixel_values.shape[0]
        if batch not in self.graphs:
            static_in = pixel_values.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            self.graphs[batch] = (graph, static_in, static_out)
        graph, static_in, static_out = self.graphs[batch]
        static_in.copy_(pixel_values)
        graph.replay()
        return static_out.clone()

