"""Fast greedy decoding: a static KV cache, one CUDA graph per shape bucket, and :func:`accelerate`.

:class:`FastGreedyDecoder` is a drop-in replacement for :func:`vla_spec.model.decoding.greedy_decode`
(same call signature, same :class:`GreedyResult`): left-padded ``inputs_embeds`` [B, L, H],
``attention_mask`` [B, L], position ids ``cumsum(mask) - 1``, greedy argmax over all logits, the
top-1 minus top-2 margin per step.

How it is fast
--------------
* **Static KV cache.** One preallocated K and V buffer per layer, [B, kv_heads, T, head_dim] with
  T = L + n - 1 rounded up to a multiple of :data:`CACHE_ALIGN`, written in place (prefill writes
  ``[:L]``, decode step j writes position ``L + j - 1``), by the Llama forward of
  :mod:`vla_spec.model.static_llama` over the model's own weights.
* **A causal prefill.** The prefill right-aligns each row (its real positions first, in order, so
  at their position ids; its left padding after them, where no real position looks), so that its
  attention is plain ``is_causal`` over the positions just written: no mask, and the kernels skip
  the blocks above the diagonal (7B shapes, H200, 280 positions: 121 against 251 us a layer at
  batch 32 for a mask over the cache, benchmarks/README.md, session 17). Its last layer goes on
  from each row's last real position only. The decode steps read the whole cache (no copies of a
  slice) under an additive mask over all T keys (real AND written), built once per call.
* **One CUDA graph per (batch, padded prefix length, n_tokens) bucket** holding the whole decode:
  the prefill, the first argmax, and the ``n - 1`` single-token steps unrolled (embedding lookup
  of the previous argmax, 32 layers, argmax + margin). A call copies the prefix into the graph's
  static input buffers and replays: no Python, no launches, no host syncs between the steps.
  Buckets are captured on first use (two eager warm-up runs on a side stream, then capture) and
  kept in an LRU of ``max_buckets``. The prefix length is left-padded up to a multiple of
  ``pad_multiple`` to bound the number of buckets (left padding does not change a row's positions
  or what it attends to).
* Options of the layer code (:mod:`vla_spec.model.static_llama`): ``compile`` (default on CUDA),
  ``gemv`` (batch-1 steps through :mod:`vla_spec.model.triton_gemv`, default on CUDA) and ``fuse``
  (fused q/k/v and gate/up copies, default on CUDA, where they are faster at every batch size
  measured: re-accelerate after changing the weights).
* K and V are written into the cache by the compiled pre-attention function itself (``index_copy_``
  at the bucket's position tensor), and the prefill's last layer runs attention, o_proj and the MLP
  for the last position only (the only one that reaches lm_head).

On CPU (or ``use_cuda_graphs=False``) the same static-cache code runs eagerly; the CPU tier checks it
against the naive path.

Exactness: the same math in the same dtype, so float32 gives the naive path's tokens (margins
to ~1e-5); in bfloat16, kernel choices differ (SDPA backend, GEMM shapes, fused
elementwise kernels that skip intermediate bf16 roundings) and a token may differ
only where the naive margin is a near-tie (:mod:`vla_spec.model.agreement`).

:func:`accelerate` puts this decoder on an :class:`~vla_spec.model.modeling.OpenVLA` and, on CUDA,
sets its ``vision_runner`` to a :class:`vla_spec.model.fast_vision.GraphedVision` and, for small
batches, its ``call_runner`` to a :class:`GraphedCall`: the whole call's device work (pixel
normalization, towers, projector, prefix gather, prefill, decode steps) in ONE CUDA graph, so that
nothing of it waits for the host between the stages.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from vla_spec.model.decoding import GreedyResult, check_decoder_inputs, greedy_step
from vla_spec.model.fast_vision import GraphedVision, captured, has_hooks
from vla_spec.model.network import PrefixLayout
from vla_spec.model.processor import pixel_values_from_uint8
from vla_spec.model.static_llama import StaticLlama, check_step_attention_backend, sdpa_backend

__all__ = ["FastGreedyDecoder", "GraphedCall", "accelerate", "restore", "is_accelerated", "first_difference",
           "right_aligned_places"]


CACHE_ALIGN = 16
"""The KV cache's length (and so the attention mask's rows) is a multiple of this: torch pads a mask
whose last dimension is not 16-aligned, a copy per attention call, before its fused SDPA kernels."""


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (True = attend) -> additive bias (0 / -inf), built once per call, not per layer."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))



def right_aligned_places(real: torch.Tensor) -> torch.Tensor:
    """Where each position of a row goes when the row is right-aligned: ``real`` [B, L] (True = a real
    position) -> [B, L] int64, a permutation of 0 .. L - 1 per row that puts the row's n real
    positions at 0 .. n - 1 and its pads at n .. L - 1, each group in its order. A left-padded row's
    real positions so land on their position ids (``cumsum(mask) - 1``), and its padding behind
    them, where causal attention from a real position never looks."""
    lengths = real.sum(dim=1, keepdim=True)
    return torch.where(real, real.cumsum(dim=1) - 1, lengths + (~real).cumsum(dim=1) - 1)


class _Bucket:
    """Static buffers (and, on CUDA, the captured graph) for one (B, L, n_tokens) shape."""

    def __init__(self, llama: StaticLlama, batch: int, length: int, n_tokens: int, dtype: torch.dtype, device: torch.device):
        self.llama, self.batch, self.length, self.n_tokens = llama, batch, length, n_tokens
        total = length + n_tokens - 1
        self.cache_len = -(-total // CACHE_ALIGN) * CACHE_ALIGN
        self.embeds = torch.zeros(batch, length, llama.hidden, dtype=dtype, device=device)
        self.mask = torch.zeros(batch, length, dtype=torch.long, device=device)
        cache_shape = (batch, llama.n_kv, self.cache_len, llama.head_dim)
        self.k_cache = [torch.zeros(cache_shape, dtype=dtype, device=device) for _ in range(llama.n_layers)]
        self.v_cache = [torch.zeros(cache_shape, dtype=dtype, device=device) for _ in range(llama.n_layers)]
        self.token_ids = torch.zeros(batch, n_tokens, dtype=torch.int64, device=device)
        self.margins = torch.zeros(batch, n_tokens, dtype=torch.float32, device=device)
        self.top_logits = torch.zeros(batch, n_tokens, dtype=torch.float32, device=device)
        self.slots = torch.arange(self.cache_len, device=device)  # prefill [:length], step j [length + j - 1]
        self.graph: torch.cuda.CUDAGraph | None = None

    def load(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        pad = self.length - inputs_embeds.shape[1]
        if pad:
            self.embeds[:, :pad].zero_()
            self.mask[:, :pad].zero_()
        self.embeds[:, pad:].copy_(inputs_embeds)
        self.mask[:, pad:].copy_(attention_mask)

    def compute(self) -> None:
        """Prefill + n_tokens greedy steps over the static buffers (eager; captured on CUDA)."""
        llama, n_layers, dtype = self.llama, self.llama.n_layers, self.embeds.dtype
        real = self.mask.bool()
        lengths = real.sum(dim=1)  # [B] real positions per row
        place = right_aligned_places(real)
        h = torch.empty_like(self.embeds).scatter_(1, place[..., None].expand_as(self.embeds), self.embeds)
        positions = self.slots[None, : self.length].expand(self.batch, -1)
        last = (lengths - 1).clamp(min=0)  # [B] each row's last real position (0 for a row of padding only)
        written = self.n_tokens - 1
        keys_valid = torch.cat([positions < lengths[:, None], real.new_ones(self.batch, written),
                                real.new_zeros(self.batch, self.cache_len - self.length - written)], dim=1)  # [B, T]
        cos, sin = llama.rotary(h, positions)
        prefill_slots = self.slots[: self.length]
        for i in range(n_layers - 1):
            h = llama.layer(i, h, cos, sin, self.k_cache[i], self.v_cache[i], prefill_slots, None)
        last_mask = _additive(self.slots[None, :] <= last[:, None], dtype)[:, None, None, :]  # [B, 1, 1, T]
        h = llama.layer(n_layers - 1, h, cos, sin, self.k_cache[-1], self.v_cache[-1], prefill_slots, last_mask, last)
        token, margin, top = greedy_step(llama.logits_last(h))
        self.token_ids[:, 0].copy_(token)
        self.margins[:, 0].copy_(margin)
        self.top_logits[:, 0].copy_(top)
        step_slots = self.slots[self.length : self.length + written]  # step j writes (and sees up to) slot L + j - 1
        seen = self.slots[None, :] <= step_slots[:, None]  # [n - 1, T]
        step_masks = _additive(keys_valid[None] & seen[:, None, :], dtype)[:, :, None, None, :]  # [n - 1, B, 1, 1, T]
        for step in range(1, self.n_tokens):
            h = llama.embed(token[:, None])
            cos, sin = llama.rotary(h, last[:, None] + step)
            step_mask = step_masks[step - 1]
            step_slot = step_slots[step - 1 : step]
            for i in range(n_layers):
                h = llama.layer(i, h, cos, sin, self.k_cache[i], self.v_cache[i], step_slot, step_mask)
            token, margin, top = greedy_step(llama.logits_last(h))
            self.token_ids[:, step].copy_(token)
            self.margins[:, step].copy_(margin)
            self.top_logits[:, step].copy_(top)

    def stages(self) -> dict[str, torch.Tensor]:
        """The buffers a run writes, as views, in the order it writes them: per layer the prefill's
        K and V [B, kv, L, d] (rows right-aligned); per decode step and layer the step's K and V
        [B, kv, 1, d]; then the ids, margins and top-1 logits (what :func:`first_difference`
        compares between replays)."""
        out: dict[str, torch.Tensor] = {}
        positions = [("prefill", slice(0, self.length))] + [
            (f"step {j}", slice(self.length + j - 1, self.length + j)) for j in range(1, self.n_tokens)
        ]
        for name, at in positions:
            for i in range(self.llama.n_layers):
                out[f"{name} layer {i} K"] = self.k_cache[i][:, :, at]
                out[f"{name} layer {i} V"] = self.v_cache[i][:, :, at]
        return out | {"token_ids": self.token_ids, "margins": self.margins, "top_logits": self.top_logits}

    def capture(self, warmup: int) -> None:
        self.graph = captured(self.compute, warmup)[0]

    def run(self) -> GreedyResult:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.compute()
        return self.result()

    def result(self) -> GreedyResult:
        return GreedyResult(
            token_ids=self.token_ids.clone(), margins=self.margins.clone(), top_logits=self.top_logits.clone()
        )


def first_difference(reference: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> str | None:
    """The first stage, in ``reference``'s order, whose tensor in ``current`` differs bitwise (NaN
    payloads included); None when all are equal."""
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().view(torch.uint8)

    return next((name for name, t in reference.items() if not torch.equal(raw(t), raw(current[name]))), None)


class FastGreedyDecoder:
    """Greedy decoder with a static KV cache and (on CUDA) one CUDA graph per shape bucket.

    Call it like :func:`~vla_spec.model.decoding.greedy_decode`:
    ``decoder(language_model, inputs_embeds, attention_mask, n_tokens) -> GreedyResult``.

    ``use_cuda_graphs``: None = on CUDA devices. ``pad_multiple``: the prefix length is left-padded
    up to a multiple of this (1 = exact lengths). ``max_buckets``: captured shapes kept (LRU; a
    7B bucket at B=32 holds ~5 GB of KV cache). ``fuse``: fused q/k/v and gate/up weights (a
    snapshot of the weights at first use, +9 GB at 7B; None = on CUDA). ``compile``: ``torch.compile`` the per-layer pieces around
    attention (None = on CUDA; the first calls compile, seconds each, and a bounded number of compiles
    serves every batch size and prefix length: :class:`vla_spec.model.static_llama.BucketCompiled`). ``warmup``: eager
    runs before a capture. ``gemv``: batch-1 decode steps are four Triton GEMVs a layer with the norms,
    the SiLU gate and the residual adds folded in (:mod:`vla_spec.model.triton_gemv`; one fixed launch
    configuration, so the same bits in every process) instead of cuBLAS and compiled elementwise
    kernels (None = on CUDA; True on the CPU needs Triton's interpreter, ``TRITON_INTERPRET=1``). ``fp8`` (default off):
    the prefill's projections in float8 e4m3 (:func:`vla_spec.model.static_llama.fp8_linear`; a
    float8 copy of those weights, +6.5 GB at 7B); this changes tokens beyond near-ties, so it is
    an option only, measured in benchmarks/README.md. ``attention_backend``: the SDPA kernel
    (:func:`vla_spec.model.static_llama.sdpa_backend`; None = torch's choice, cuDNN's kernel on an
    H200). ``step_attention_backend``: the decode steps' kernel, and the prefill's last layer's (one
    query row per sequence there too, since session 19). None = ``"triton"``
    (:func:`vla_spec.model.triton_attention.decode_attention`) on CUDA when ``attention_backend`` is
    None, else ``attention_backend``'s; ``"sdpa"`` = torch's choice (the default before session 12:
    on an H200 cuDNN's single-query kernel, whose replays are not bitwise equal at batch 8 and 32;
    ``"efficient"`` is reproducible and slower; the Triton kernel is reproducible and costs about
    1.6 % of the decoder at batch 32, benchmarks/README.md, session 12).
    """

    def __init__(
        self,
        *,
        use_cuda_graphs: bool | None = None,
        pad_multiple: int = 8,
        max_buckets: int = 4,
        fuse: bool | None = None,
        compile: bool | None = None,
        gemv: bool | None = None,
        warmup: int = 2,
        fp8: bool = False,
        attention_backend: str | None = None,
        step_attention_backend: str | None = None,
    ) -> None:
        if pad_multiple < 1 or max_buckets < 1:
            raise ValueError("pad_multiple and max_buckets must be >= 1")
        sdpa_backend(attention_backend), check_step_attention_backend(step_attention_backend)  # bad names fail here
        self.use_cuda_graphs = use_cuda_graphs
        self.pad_multiple = pad_multiple
        self.max_buckets = max_buckets
        self.fuse = fuse
        self.compile = compile
        self.gemv = gemv
        self.warmup = warmup
        self.fp8 = fp8
        self.attention_backend = attention_backend
        self.step_attention_backend = step_attention_backend
        self._llamas: dict[int, StaticLlama] = {}
        self._buckets: OrderedDict[tuple[Any, ...], _Bucket] = OrderedDict()

    def bucket(self, key: tuple[Any, ...]) -> _Bucket:
        """The captured shape ``key`` (one of :attr:`buckets`): its buffers and :meth:`_Bucket.stages`."""
        return self._buckets[key]

    @property
    def buckets(self) -> list[tuple[Any, ...]]:
        """Keys (model id, B, padded L, n_tokens, dtype, device) of the shapes captured so far."""
        return list(self._buckets)

    def clear(self) -> None:
        """Drop every captured graph, cache buffer and fused weight copy."""
        self._buckets.clear()
        self._llamas.clear()

    def padded(self, length: int) -> int:
        """The bucket length of a prefix of ``length`` positions (up to a multiple of ``pad_multiple``)."""
        return -(-length // self.pad_multiple) * self.pad_multiple

    def static_llama(self, language_model: Any, device: torch.device) -> StaticLlama:
        """The layer code over ``language_model``'s weights with this decoder's options (built once)."""
        key = id(language_model)
        if key not in self._llamas or self._llamas[key].lm is not language_model:
            compiled = self.compile if self.compile is not None else device.type == "cuda"
            use_gemv = self.gemv if self.gemv is not None else device.type == "cuda"
            fused = self.fuse if self.fuse is not None else device.type == "cuda"
            step = self.step_attention_backend
            if step is None and self.attention_backend is None and device.type == "cuda":
                step = "triton"
            self._llamas[key] = StaticLlama(language_model, fused, compiled, use_gemv, self.fp8, self.attention_backend,
                                            step)
        return self._llamas[key]

    @torch.inference_mode()
    def __call__(
        self, language_model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, n_tokens: int
    ) -> GreedyResult:
        check_decoder_inputs(inputs_embeds, attention_mask, n_tokens)
        llama = self.static_llama(language_model, inputs_embeds.device)
        batch, length, _ = inputs_embeds.shape
        padded = self.padded(length)
        device, dtype = inputs_embeds.device, inputs_embeds.dtype
        graphs = self.use_cuda_graphs if self.use_cuda_graphs is not None else device.type == "cuda"
        key = (id(language_model), batch, padded, n_tokens, dtype, str(device))
        bucket = self._buckets.get(key)
        fresh = bucket is None
        if fresh:
            while len(self._buckets) >= self.max_buckets:
                self._buckets.popitem(last=False)
            bucket = _Bucket(llama, batch, padded, n_tokens, dtype, device)
            self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        bucket.load(inputs_embeds, attention_mask.to(device=device, dtype=torch.long))
        if fresh and graphs:
            bucket.capture(self.warmup)
        return bucket.run()



class _CallGraph:
    """Static inputs and the captured graph of one whole call shape (batch, bucket length, n_tokens,
    image size): uint8 pixels, the prefix layout (:meth:`OpenVLANetwork.prefix_layout`) and a decoder
    :class:`_Bucket` whose prefill reads the gathered prefix; captured from the first call's inputs."""

    def __init__(
        self, model: Any, vision: GraphedVision, bucket: _Bucket, pixels: torch.Tensor, layout: PrefixLayout, warmup: int
    ) -> None:
        device = model.device
        self.model, self.vision, self.bucket = model, vision, bucket
        self.pixels = torch.zeros(pixels.shape, dtype=torch.uint8, device=device)
        self.ids = torch.zeros(bucket.batch * bucket.length, dtype=torch.int64, device=device)
        self.index = torch.zeros(bucket.batch, bucket.length, dtype=torch.int64, device=device)
        self.load(pixels, layout)
        self.graph = captured(self.compute, warmup)[0]

    def load(self, pixels: torch.Tensor, layout: PrefixLayout) -> None:
        self.pixels.copy_(pixels)
        self.ids.copy_(layout.ids)
        self.index.copy_(layout.index)
        self.bucket.mask.copy_(layout.attention_mask)

    def compute(self) -> None:
        model, vision = self.model, self.vision
        patches = vision.encode(pixel_values_from_uint8(self.pixels, model.dtype), vision.stream())
        self.bucket.embeds.copy_(model.assemble_prefix(self.ids, self.index, patches))
        self.bucket.compute()


class GraphedCall:
    """``model.call_runner``: the device work of a ``predict_action`` call of at most ``max_batch``
    rows as ONE CUDA graph per (batch, bucket length, n_tokens, image size), kept in an LRU of
    ``max_graphs``: the host copies the uint8 images and the prefix layout in, replays, and reads
    the tokens. The same kernels as ``vision`` and ``decoder`` (same compiled functions, same
    weights), so bitwise the same tokens and margins; it removes the launches and host round trips
    between the stages (7B shapes, batch 1, H200: 39.6 -> 37.6 ms a call, benchmarks/README.md).

    It stands aside (:meth:`applies` is False) unless the model still uses this ``decoder`` and
    ``vision`` with ``pixels_on_device``, and while forward hooks are registered on the towers or
    the projector."""

    def __init__(
        self, model: Any, decoder: FastGreedyDecoder, vision: GraphedVision, max_batch: int = 1, max_graphs: int = 4
    ) -> None:
        self.model, self.decoder, self.vision = model, decoder, vision
        self.max_batch, self.max_graphs = max_batch, max_graphs
        self._graphs: OrderedDict[tuple[Any, ...], _CallGraph] = OrderedDict()

    def applies(self, batch: int) -> bool:
        model = self.model
        return (
            batch <= self.max_batch and model.decoder is self.decoder and model.vision_runner is self.vision
            and model.pixels_on_device and model.device.type == "cuda" and not has_hooks(self.vision.hookable)
        )

    @property
    def shapes(self) -> list[tuple[Any, ...]]:
        """Keys (batch, bucket length, n_tokens, image shape) of the graphs captured so far."""
        return list(self._graphs)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, input_ids: list[list[int]], n_tokens: int) -> GreedyResult:
        """``pixels`` uint8 [B, H, W, 3] (host), ``input_ids`` one prompt per row -> the decoder's result."""
        model = self.model
        batch = len(input_ids)
        if pixels.shape[0] != batch:
            raise ValueError(f"{pixels.shape[0]} images but {batch} prompts: give one prompt per image")
        length = self.decoder.padded(max(len(ids) for ids in input_ids) + model.vision_backbone.num_patches)
        layout = model.prefix_layout(input_ids, length, token_rows=batch * length)
        key = (batch, length, n_tokens, tuple(pixels.shape[1:]))
        entry = self._graphs.get(key)
        if entry is None:
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            llama = self.decoder.static_llama(model.language_model, model.device)
            bucket = _Bucket(llama, batch, length, n_tokens, model.dtype, model.device)
            entry = self._graphs[key] = _CallGraph(model, self.vision, bucket, pixels, layout, self.decoder.warmup)
        self._graphs.move_to_end(key)
        entry.load(pixels, layout)
        entry.graph.replay()
        return entry.bucket.result()


def accelerate(
    model: Any,
    *,
    decoder: FastGreedyDecoder | None = None,
    vision: bool = True,
    compile_vision: bool | None = None,
    use_cuda_graphs: bool | None = None,
    one_graph_max_batch: int = 1,
    vision_compile_mode: str | None = None,
) -> Any:
    """Make ``model`` (an :class:`~vla_spec.model.modeling.OpenVLA`) fast, in place; returns it.

    Sets ``model.decoder`` to ``decoder`` (default: a new :class:`FastGreedyDecoder`). With
    ``vision`` and on CUDA, ``model.vision_runner`` becomes a :class:`GraphedVision` (both towers +
    the projector replay one CUDA graph per batch size); ``compile_vision`` (None = on CUDA) also
    runs them through ``torch.compile`` (the first call compiles: tens of seconds at 7B shapes, once
    more at the second batch size; ``vision_compile_mode``: its ``torch.compile`` mode, None = the
    default). With ``vision`` and CUDA graphs, calls of up to
    ``one_graph_max_batch`` rows run as one graph (``model.call_runner``, a :class:`GraphedCall`; 0 =
    never). Undo with :func:`restore`. Treat the weights as frozen while accelerated. The defaults
    are the fastest configuration measured (benchmarks/README.md).
    """
    graphs = use_cuda_graphs if use_cuda_graphs is not None else model.device.type == "cuda"
    compiled = compile_vision if compile_vision is not None else model.device.type == "cuda"
    model.decoder = decoder if decoder is not None else FastGreedyDecoder(use_cuda_graphs=use_cuda_graphs)
    model.call_runner = None
    if vision and (graphs or compiled):
        model.vision_runner = GraphedVision(model, compiled, graphs, compile_mode=vision_compile_mode)
        if graphs and one_graph_max_batch > 0:
            model.call_runner = GraphedCall(model, model.decoder, model.vision_runner, one_graph_max_batch)
    return model


def is_accelerated(model: Any) -> bool:
    return isinstance(getattr(model, "decoder", None), FastGreedyDecoder)


def restore(model: Any) -> Any:
    """Undo :func:`accelerate`: the naive decoder and the eager vision path."""
    from vla_spec.model.decoding import greedy_decode

    model.decoder = greedy_decode
    model.vision_runner = None
    model.call_runner = None
    return model
