"""Compiled backend: a static KV cache and `torch.compile`d forwards (CUDA graphs on a GPU).

Why: eager Hugging Face decoding is bound by Python overhead on a GPU (tens of ms per token for any model
size), which makes a drafter as slow as its target. A static cache gives every forward fixed shapes, so
`torch.compile` (mode "reduce-overhead" on CUDA: CUDA graphs) can run it with no Python in between.

- The cache holds `capacity` positions in every layer (plain key/value layers, also for sliding-window
  models: their attention mask applies the window, as in the eager backend). Rolling back is setting the
  valid length: later writes overwrite what lies beyond, nothing is copied.
- Inputs are padded up to a bucket (powers of two up to `max_bucket`, or the `buckets` given; longer inputs
  run in chunks of the longest), so only those shapes are ever compiled, all of them at load (the warm-up),
  never while a run is timed. Padded positions come after the real tokens: the causal mask hides them from every real
  token, their outputs are dropped, and the valid length never covers them.
- Preemption: a compiled region cannot call back into Python, so the layers are split into `segments`
  groups with the cancel check (the layer callback) before each: a graph break at each group's first layer
  (a `torch._dynamo.disable`d hook), and before the first group in Python, before each compiled call (chunk).
  `segments` = the number of layers gives per-layer checks, 1 one check per compiled call (the drafter's).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dsi_mpi.backends.base import ModelRunner
from dsi_mpi.backends.hf import UnsupportedModel, adopt_model, check_config_layers, decoder_layers


def buckets_up_to(max_bucket: int) -> tuple[int, ...]:
    """1, 2, 4, ... and `max_bucket` itself: the only input lengths a compiled forward ever sees."""
    out, b = [], 1
    while b < max_bucket:
        out.append(b)
        b *= 2
    return (*out, max_bucket)


def segment_starts(n_layers: int, segments: int) -> list[int]:
    """First layer of each of `segments` nearly equal groups (0 excluded: checked before the call)."""
    segments = max(1, min(segments, n_layers))
    return sorted({round(i * n_layers / segments) for i in range(1, segments)})


def static_cache(n_layers: int, capacity: int):
    """One plain static key/value layer per decoder layer (the same classes in transformers 5.17 and 5.24)."""
    from transformers.cache_utils import Cache, StaticLayer

    return Cache(layers=[StaticLayer(max_cache_len=capacity) for _ in range(n_layers)])


_GRAPHS_ALLOWED = [8]  # summed over the runners of this process (they share code objects, so recompile counts)


def _raise_recompile_limits(needed: int) -> None:
    """Each (bucket, segment) is its own compiled graph: allow that many more, and fail loudly past the limit
    (the runner then falls back to eager, recorded) rather than silently running eager code as compiled."""
    _GRAPHS_ALLOWED[0] += needed
    needed = _GRAPHS_ALLOWED[0]
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), needed))
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        cfg.fail_on_recompile_limit_hit = True
    # Guard on module hooks: compiled code is shared by every runner of this process (one code object), and
    # without these guards a model with other cancel hooks (another granularity) would reuse graphs without them.
    cfg.skip_nnmodule_hook_guards = False


class CompiledRunner(ModelRunner):
    """Same interface as HFRunner; `compile_info` says how it was compiled and what that cost."""

    backend = "compiled"

    def __init__(
        self,
        model,
        eos_token_ids=(),
        capacity: int = 512,
        segments: int = 2,
        max_bucket: int = 16,
        mode=None,
        buckets=(),
    ):
        super().__init__()
        adopt_model(self, model, eos_token_ids)
        check_config_layers(model)
        layers = decoder_layers(model)
        self.n_layers = len(layers)
        self.buckets = tuple(sorted(set(buckets))) or buckets_up_to(max_bucket)  # buckets: models.compile_buckets
        self.max_bucket = self.buckets[-1]
        self.capacity = int(capacity) + self.max_bucket  # room for the padding of the last block
        self.cache = static_cache(self.n_layers, self.capacity)
        self._length = -1  # unknown until the first _set_length
        self.starts = segment_starts(self.n_layers, segments)
        self.segments = len(self.starts) + 1
        check = torch._dynamo.disable(self._between_segments)
        for i in self.starts:
            layers[i].register_forward_pre_hook(lambda module, args: check())
        self._arange = torch.arange(self.capacity, device=self.device)  # key positions, for the mask
        self._positions = torch.arange(self.capacity, device=self.device)  # inputs are slices of this one
        if mode is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        self.mode = mode
        _raise_recompile_limits(4 * len(self.buckets) * self.segments)
        from torch._inductor import config as inductor_config

        # One graph on a CPU: the weights are frozen into it (prepacked for the CPU's GEMV: 0.69x eager instead
        # of 0.94x on the default target). Never with segments: their per-layer frames serve every layer. (The
        # compile happens in the warm-up below, so this process-wide switch is set per runner.)
        inductor_config.freezing = self.device.type == "cpu" and self.segments == 1
        self._step = torch.compile(self._raw_step, dynamic=False, mode=mode)
        self.compile_info = {
            "backend": "compiled",
            "mode": mode,
            "segments": self.segments,
            "segment_starts": self.starts,
            "buckets": list(self.buckets),
            "capacity": self.capacity,
        }
        self._warm_up()

    # ------------------------------------------------------------------ compiled step
    def _raw_step(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The compiled region: all logits of one padded block (their rows are picked outside)."""
        mask = (self._arange[None, :] <= positions[:, -1:]).long()
        out = self.model(
            input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, **{self.cache_kw: self.cache}
        )
        return out.logits

    def _between_segments(self) -> None:
        if self._layer_callback is not None:
            self._layer_callback()

    def _set_length(self, length: int) -> None:
        """Where the next write goes in every layer; `_length` mirrors it so that consecutive unpadded steps
        (plain decoding) need no tensor writes at all. Written under inference mode: the cache's first fill (the
        warm-up's, under inference mode) moves each layer's counter to the device, which on a GPU makes it a new
        inference tensor, and crops and resets come from outside inference mode, where an in-place write to
        one is refused (on a CPU the move keeps the same tensor, so only a GPU would fail)."""
        if length != self._length:
            with torch.inference_mode():
                for layer in self.cache.layers:
                    if layer.is_initialized:
                        layer.cumulative_length.fill_(length)
            self._length = length

    def _run_block(self, tokens: list[int], start: int) -> torch.Tensor:
        """Logits of `tokens` written at positions start.. (padded to a bucket; the pad is never valid)."""
        n = len(tokens)
        b = next(b for b in self.buckets if b >= n)
        if start + b > self.capacity:
            raise RuntimeError(
                f"compiled backend: position {start + n} is past the static cache's {self.capacity - self.max_bucket} "
                "positions (sized from the longest prompt, max_new_tokens and the lookahead)"
            )
        if self._layer_callback is not None:  # the check before the first segment, outside the compiled call
            self._layer_callback()
        ids = torch.tensor([tokens + [0] * (b - n)], dtype=torch.long, device=self.device)
        self._set_length(start)
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the previous one's outputs were copied out
        try:
            logits = self._step(ids, self._positions[start : start + b].unsqueeze(0))
        except BaseException:  # stopped between segments: the layers now disagree, the next crop rewrites them all
            self._length = -1
            raise
        self._length = start + b  # what the compiled writes left in every layer
        self._set_length(start + n)
        return logits[0, :n]

    @torch.inference_mode()
    def _forward(self, tokens: list[int], n_out: int) -> torch.Tensor:
        start = len(self.tokens)
        kept = []
        for i in range(0, len(tokens), self.max_bucket):
            chunk = tokens[i : i + self.max_bucket]
            logits = self._run_block(chunk, start + i)
            wanted = n_out - (len(tokens) - i - len(chunk))  # outputs of this chunk that are asked for
            if wanted > 0:
                kept.append(logits[len(chunk) - min(wanted, len(chunk)) :].clone())  # CUDA graph outputs are reused
        return torch.cat(kept) if len(kept) > 1 else kept[0]

    def _crop(self, length: int) -> None:
        self._set_length(length)

    def _argmax(self, scores: torch.Tensor, first_position: int) -> np.ndarray:
        return scores.argmax(dim=-1).to("cpu", torch.int64).numpy()

    # ------------------------------------------------------------------ load-time work
    def _warm_up(self) -> None:
        """Compile every bucket (first call), then run each twice more (CUDA graph capture, allocator), untimed
        by any algorithm; then check the compiled logits against the eager model's on a short sequence."""
        compile_s, warmup_s = 0.0, 0.0
        callback, self._layer_callback = self._layer_callback, None
        with torch.inference_mode():
            # allocate the cache outside any compiled region, so its tensors get fixed addresses
            self.model(
                input_ids=torch.zeros((1, 1), dtype=torch.long, device=self.device),
                use_cache=True,
                **{self.cache_kw: self.cache},
            )
            for b in self.buckets:
                t0 = time.perf_counter()
                self._run_block([0] * b, 0)
                self.sync()
                t1 = time.perf_counter()
                for _ in range(2):
                    self._run_block([0] * b, 0)
                self.sync()
                compile_s += t1 - t0
                warmup_s += time.perf_counter() - t1
        self._set_length(0)
        self._check_against_eager()
        self._layer_callback = callback
        self.compile_info.update(compile_s=round(compile_s, 3), warmup_s=round(warmup_s, 3))

    def _check_against_eager(self) -> None:
        """A model whose forward ignores the positions or the mask would give wrong tokens silently: refuse it."""
        from transformers import DynamicCache

        rng = np.random.default_rng(0)
        seq = [int(t) for t in rng.integers(0, self.vocab_size, size=min(self.max_bucket + 3, 11))]
        with torch.inference_mode():
            ids = torch.tensor([seq], device=self.device)
            ref = self.model(input_ids=ids, use_cache=True, **{self.cache_kw: DynamicCache()}).logits[0].float()
        got = torch.cat([self.forward(seq[:-1], len(seq) - 1), self.forward(seq[-1:], 1)]).float()
        self.reset()
        self.computed_tokens = self.forward_calls = 0
        why = logits_mismatch(got, ref, self.model.dtype)
        if why:
            raise UnsupportedModel(f"{type(self.model).__name__}: compiled logits differ from eager ones ({why})")


def logit_bound(dtype: torch.dtype) -> float:
    """How far compiled logits may stray from eager ones, as a share of the largest eager logit: 1e-4 in float32,
    16 machine epsilons in a 16-bit type (bfloat16 0.125, float16 0.016). Fused kernels keep in float32 what
    eager rounds to 16 bits after every operation, so the two drift apart layer by layer: a trained SmolLM2-135M
    gave 0.056 (7 epsilons) in bfloat16 on a CPU."""
    return max(1e-4, 16 * torch.finfo(dtype).eps)


def logits_mismatch(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> str | None:
    """Why compiled logits `got` cannot stand for eager `ref` ([positions, vocabulary], float32), or None: the
    error is above the dtype's bound, or the greedy token differs where eager's top two are further apart than
    that bound (nearer ties may flip from rounding alone: bfloat16 logits often tie exactly)."""
    scale = float(ref.abs().max()) or 1.0
    bound = logit_bound(dtype)
    err = float((got - ref).abs().max()) / scale
    if not err <= bound:
        return f"relative error {err:.2g}, above the {bound:.3g} allowed in {str(dtype).removeprefix('torch.')}"
    top = ref.topk(2, dim=-1).values
    clear = (top[:, 0] - top[:, 1]) > bound * scale
    differ = ((got.argmax(dim=-1) != ref.argmax(dim=-1)) & clear).nonzero()
    if len(differ):
        return f"another greedy token at position {int(differ[0, 0])}, not a near-tie; relative error {err:.2g}"
    return None
