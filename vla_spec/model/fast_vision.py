"""The vision towers + projector as CUDA graphs: a ``vision_runner`` for the network.

:class:`GraphedVision` is set as ``model.vision_runner`` (:class:`vla_spec.model.network.OpenVLANetwork`
then calls it instead of :meth:`~vla_spec.model.network.OpenVLANetwork.encode_images_eager`): one
captured graph per batch size holding both towers and the projector, each optionally through
``torch.compile`` (which fuses the LayerNorm, GELU, LayerScale and residual work between the
matrix products; one compile for the first batch size and one with a dynamic batch for all others;
:data:`TOWER_COMPILE_OPTIONS`). The two towers run side by side on two streams inside the graph
(each alone leaves most of the GPU idle at small batch). Compiled, each tower's patch embedding
(a convolution whose stride is its kernel) runs as one matrix product (:func:`patch_embedding_as_matmul`)
instead of cuDNN's convolution. While any forward hook is registered
on the towers or the projector (as :func:`vla_spec.model.liveness.check_liveness` does), the eager
path runs so that the hooks see their calls.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch


T = TypeVar("T")

_HOOKED = ("vision_backbone.featurizer", "vision_backbone.fused_featurizer", "projector")


def captured(compute: Callable[[], T], warmup: int) -> tuple[torch.cuda.CUDAGraph, T]:
    """``compute`` run ``warmup`` times eagerly on a side stream (compiling, autotuning), then captured
    into a new CUDA graph: the graph and what the captured run returned (its static outputs).

    The cuBLAS workspaces are dropped first, so the capture allocates its own in the graph's private
    pool, alive as long as the graph. Otherwise the graph keeps the address of the workspace an
    earlier capture on the same (shared) capture stream allocated, in that capture's pool; once that
    graph is gone and something clears the workspaces (inductor's CUDA graph trees do, e.g. in
    transformers' static-cache ``generate``), ``empty_cache`` can return the memory to the driver
    and a replay runs its GEMMs on freed memory: the cause, by torch's source, of the "unspecified
    launch failure" of issue 10 (H200, session 9 run 4 and session 10 run 1, batch 8)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            compute()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compute()
    return graph, out


def hookable_modules(model: Any) -> list[torch.nn.Module]:
    """The modules of the towers and the projector, listed once (walking them with ``modules()`` at
    every call cost about 0.7 ms of host time at 7B shapes, 1167 modules: benchmarks/README.md)."""
    return [m for name in _HOOKED for m in model.get_submodule(name).modules()]


def has_hooks(modules: list[torch.nn.Module]) -> bool:
    """Whether any forward (pre-)hook, global or on one of ``modules`` (:func:`hookable_modules`),
    would miss a graph replay."""
    from torch.nn.modules import module as module_mod

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


TOWER_COMPILE_OPTIONS = {"comprehensive_padding": False}
"""Inductor options for the towers and the projector. Inductor's comprehensive padding gives SigLIP's
MLP hidden activations [B*256, 4304] a row stride of 4352 (128-byte rows) when the batch is static;
cuBLASLt's bias epilogue then fails for fc1, and torch falls back to copying the bias into the
output and a GEMM that adds it (26 copies of ~60 us at batch 32). Without it, batch 32's towers +
projector graph (a static compile) took 28.47 ms against 29.59 on two streams, 29.03 against 30.02 on
one (H200, session 18, run 5: ``benchmarks/bench_towers.py graphs``).

Not here: ``triton.multi_kernel`` (SigLIP's 1152-wide LayerNorms persistent instead of looped:
batch 32 27.62 -> 27.07 ms, session 19, run 1). With torch 2.11 / Triton 3.6 a compile that hits
inductor's on-disk cache then fails (``MultiKernelCall`` hashes a reloaded Triton function that
lost its lock: session 19, run 2, benchmarks/README.md)."""


def patch_embedding_as_matmul(
    images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int], padding: list[int],
    dilation: list[int], transposed: bool, output_padding: list[int], groups: int,
) -> torch.Tensor:
    """``aten.convolution`` (same arguments) where it is a ViT patch embedding, as one matrix product:
    images [B, C, H, W] cut into (H / kh) x (W / kw) patches of C x kh x kw values each (in the
    weight's order: channel, row, column), times the weight [D, C x kh x kw] transposed, plus the
    bias; out [B, D, H / kh, W / kw], its memory channels-last (the layout the ViT reads next).

    The product's depth C x kh x kw is zero-padded to a multiple of 8 (588 -> 592 for 3 x 14 x 14),
    16-byte rows for cuBLAS; zeros add nothing. NotImplemented (inductor's own lowering, cuDNN)
    unless the stride equals a 2-d kernel, with no padding, dilation, groups or transposition, over
    a whole number of patches. Why: cuDNN ran the towers' two patch embeddings (3 channels in) at
    batch 32 as an sm80 kernel of 261 us each, plus 0.2 ms of layout transposes, for 11 GFLOP each
    (H200, session 18, benchmarks/results/h200_s18_run1_towers_profile.txt). As a product, about
    0.04 ms of kernels each, and the compiled towers + projector graph at batch 32 took 27.73 ms
    against 28.50 (session 19, run 4: ``benchmarks/bench_towers.py patch graphs``)."""
    if weight.ndim != 4 or images.ndim != 4:
        return NotImplemented
    out_channels, channels, kh, kw = weight.shape
    height, width = images.shape[-2:]
    if (transposed or groups != 1 or list(stride) != [kh, kw] or any(padding) or any(d != 1 for d in dilation)
            or height % kh or width % kw):
        return NotImplemented
    rows, cols, depth = height // kh, width // kw, channels * kh * kw
    patches = images.reshape(-1, channels, rows, kh, cols, kw).permute(0, 2, 4, 1, 3, 5).reshape(-1, depth)
    flat_weight = weight.reshape(out_channels, depth)
    pad = -depth % 8
    if pad:
        patches, flat_weight = torch.nn.functional.pad(patches, (0, pad)), torch.nn.functional.pad(flat_weight, (0, pad))
    out = patches @ flat_weight.t() if bias is None else torch.addmm(bias, patches, flat_weight.t())
    return out.view(-1, rows, cols, out_channels).permute(0, 3, 1, 2)


class TowerCompiler:
    """The ``torch.compile`` backend of the towers and the projector: inductor with ``options``
    (its config patches) and :func:`patch_embedding_as_matmul` in its decomposition table."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)

    def decompositions(self) -> dict[Any, Callable[..., Any]]:
        """Inductor's own table, with ``aten.convolution`` going through :func:`patch_embedding_as_matmul`."""
        from torch._inductor.decomposition import select_decomp_table

        return {**select_decomp_table(), torch.ops.aten.convolution.default: patch_embedding_as_matmul}

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        """Inductor, without AOTAutograd's cache: its key leaves the decomposition table out, so it
        would return what a plain ``torch.compile`` of the same module compiled (convolutions and all).
        Inductor's own cache still serves the graph after decomposition."""
        from torch._functorch import config as functorch_config
        from torch._inductor.compile_fx import compile_fx

        with functorch_config.patch(enable_autograd_cache=False):
            return compile_fx(graph, example_inputs, config_patches=self.options, decompositions=self.decompositions())


class GraphedVision:
    """A ``vision_runner``: one CUDA graph per batch size of the towers + projector (each optionally
    compiled), the two towers on two streams. Measured on an H200, one graph, one stream against two:
    compiled towers (as :func:`vla_spec.model.fast_decoding.accelerate` builds them) batch 8 7.84 /
    7.56 ms, batch 32 29.03 / 28.47 (session 18, run 5: ``benchmarks/bench_towers.py graphs``); eager
    towers batch 1 3.65 / 2.75, batch 8 10.29 / 10.12, batch 32 36.6 / 40.1 (an earlier session,
    benchmarks/profile_predict_action.py)."""

    def __init__(
        self, model: Any, compile_vision: bool, use_cuda_graphs: bool, warmup: int = 2, compile_mode: str | None = None,
    ) -> None:
        """``compile_mode``: ``torch.compile``'s mode for the towers and the projector (None = its
        default; e.g. ``"max-autotune-no-cudagraphs"`` autotunes the matrix products, minutes of compile)."""
        self.model = model
        self.hookable = hookable_modules(model)
        self.eager: Callable[[torch.Tensor], torch.Tensor] = model.encode_images_eager
        backbone = model.vision_backbone
        options = dict(TOWER_COMPILE_OPTIONS)
        if compile_mode is not None:
            from torch._inductor import list_mode_options

            options = {**list_mode_options(compile_mode), **options}
        self.compiler = TowerCompiler(options)
        wrap: Callable[[Any], Any] = (
            (lambda module: torch.compile(module, backend=self.compiler)) if compile_vision else (lambda module: module)
        )
        self.towers = (wrap(backbone.featurizer), wrap(backbone.fused_featurizer))
        self.projector = wrap(model.projector)
        self.use_cuda_graphs = use_cuda_graphs
        self.warmup = warmup
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._side_stream: torch.cuda.Stream | None = None

    def stream(self) -> torch.cuda.Stream:
        """The side stream SigLIP runs on inside the graphs (made at the first capture)."""
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        return self._side_stream

    def encode(self, pixel_values: torch.Tensor, side_stream: torch.cuda.Stream | None = None) -> torch.Tensor:
        """Towers (SigLIP on ``side_stream`` when given) + projector, as :meth:`encode_images_eager`."""
        backbone = self.model.vision_backbone
        dino, siglip = backbone.split(pixel_values)
        if side_stream is None:
            return self.projector(backbone.join(self.towers[0](dino), self.towers[1](siglip)))
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            siglip_patches = self.towers[1](siglip)
        dino_patches = self.towers[0](dino)
        torch.cuda.current_stream().wait_stream(side_stream)
        return self.projector(backbone.join(dino_patches, siglip_patches))

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        if has_hooks(self.hookable):
            return self.eager(pixel_values)
        pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
        if not (self.use_cuda_graphs and pixel_values.is_cuda):
            return self.encode(pixel_values)
        batch = pixel_values.shape[0]
        if batch not in self.graphs:
            static_in = pixel_values.clone()
            side = self.stream()
            graph, static_out = captured(lambda: self.encode(static_in, side), self.warmup)
            self.graphs[batch] = (graph, static_in, static_out)
        graph, static_in, static_out = self.graphs[batch]
        static_in.copy_(pixel_values)
        graph.replay()
        return static_out.clone()
