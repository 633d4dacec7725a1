"""Packed backend: a lean forward of Llama-family models on a CPU core, weights packed once, a static KV cache.

Why: on a CPU a verification of k + 1 tokens must cost about what one token costs, or speculation does not pay
(docs/backends.md has the measurements). Hugging Face's eager forward gives oneDNN/MKL unpacked
weights (2+ rows repack every matrix on every call) and spends a sizeable share of a small model's step outside
its matrix products (module calls, mask building, cache bookkeeping). This runner computes the same function
with: the query/key/value and gate/up matrices fused into one product each, every matrix packed once
(`packed_linear.py`), rotary tables and the causal mask computed once, and a KV cache of fixed buffers that a
rollback only shortens (the next write overwrites what lies beyond).

What it runs: `model_type` llama, mistral or qwen2 without an active sliding window, SiLU MLPs without bias,
any rotary scaling that does not depend on the sequence length (`packable`); fp32 or bf16, or for a quantized
drafter int8 with a scale per row or int4 with a scale per row and 32 inputs (backends/quantize.py). In bf16 the head's logits are computed in fp32 (bf16
logits are rounded to steps of 0.125 at SmolLM2's scale and make exact ties). Anything else runs on the eager
backend, with the reason recorded. At load the runner's logits are checked against the Hugging Face model's own
forward (`check_against_hf`); a model that fails is refused here and runs eager, recorded, never with wrong
tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from dsi_mpi.backends import native
from dsi_mpi.backends.base import ModelRunner
from dsi_mpi.backends.cpu import last_level_cache_bytes
from dsi_mpi.backends.hf import UnsupportedModel, adopt_model, decoder_layers
from dsi_mpi.backends.packed_linear import NativeLinear, OneDnnLinear, choose_plain_rows, packing_available
from dsi_mpi.backends.packed_ops import NativeOps, TorchOps
from dsi_mpi.backends.quantize import INT4, dtype_name

PACKABLE_TYPES = ("llama", "mistral", "qwen2")
DTYPES = (torch.float32, torch.bfloat16)


class _Idle(Exception):
    """Ends an idle forward (PackedRunner.idle_forward)."""


def packable(model) -> str | None:
    """Why the packed backend cannot run `model` (None: it can), from its config and modules."""
    config = model.config
    if not packing_available():
        return "this torch build has no oneDNN (mkldnn) linear kernels"
    if config.model_type not in PACKABLE_TYPES:
        return f"model type {config.model_type!r} is not one of {', '.join(PACKABLE_TYPES)}"
    if model.dtype not in DTYPES or next(model.parameters()).device.type != "cpu":
        return f"it runs fp32 or bf16 on a CPU ({model.dtype} on {next(model.parameters()).device.type} asked)"
    if getattr(config, "sliding_window", None) is not None or any(
        t != "full_attention" for t in getattr(config, "layer_types", None) or []
    ):
        return "sliding-window attention"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) not in (None, 1):
        return f"activation {config.hidden_act!r} / pretraining_tp {getattr(config, 'pretraining_tp', 1)}"
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is None or "dynamic" in str(getattr(rotary, "rope_type", "")):
        return "no rotary table that is fixed per position"
    layer = decoder_layers(model)[0]
    if any(getattr(getattr(layer.mlp, n, None), "bias", 1) is not None for n in ("gate_proj", "up_proj", "down_proj")):
        return "an MLP without the gate/up/down projections of Llama (or with bias)"
    return None


class _Layer:
    """One decoder layer's weights: fused products and the two norms' weights (fp32)."""

    __slots__ = ("norm1", "qkv", "o", "norm2", "gate_up", "down")

    def __init__(self, layer, make_linear):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1 = layer.input_layernorm.weight.detach().float()
        self.norm2 = layer.post_attention_layernorm.weight.detach().float()
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        has_bias = any(p.bias is not None for p in projections)
        bias = torch.cat([_bias_or_zero(p) for p in projections]) if has_bias else None
        self.qkv = make_linear(torch.cat([p.weight for p in projections]), bias)
        self.o = make_linear(attn.o_proj.weight, attn.o_proj.bias)
        self.gate_up = make_linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), None)
        self.down = make_linear(mlp.down_proj.weight, None)

    def linears(self) -> tuple:
        """The products of this layer (for the choice of kernels)."""
        return self.qkv, self.o, self.gate_up, self.down


def _bias_or_zero(linear) -> torch.Tensor:
    return linear.bias.detach() if linear.bias is not None else linear.weight.new_zeros(linear.weight.shape[0])


class PackedRunner(ModelRunner):
    """Same interface as HFRunner; `compile_info` records the backend, the weights' dtype and the kernels.
    Activations, the KV cache and the logits are fp32 whatever the weights' dtype."""

    backend = "packed"

    def __init__(self, model, eos_token_ids=(), capacity: int = 512, quantized: torch.dtype | None = None):
        super().__init__()
        reason = packable(model)
        if reason:
            raise UnsupportedModel(f"packed backend: {reason}")
        adopt_model(self, model, eos_token_ids)
        config, base = model.config, model.base_model
        self.dtype = quantized or model.dtype  # the products' weights (int8 or int4: a quantized drafter)
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = float(config.rms_norm_eps)
        self.embed = base.embed_tokens.weight.detach().contiguous()
        self.norm = base.norm.weight.detach().float()
        self.kernels, why_not = native.load() if torch.get_num_threads() == 1 else (None, "more than one thread")
        if self.kernels is None and self.dtype != torch.float32:
            raise UnsupportedModel(f"packed backend: {self.dtype} weights need its own kernels ({why_not})")
        with torch.inference_mode():
            self.layers = [_Layer(layer, self._linear) for layer in decoder_layers(model)]
            head = model.get_output_embeddings()
            head_dtype = quantized or torch.float32
            self.head, self.head_rows = self._linear(head.weight, None, head_dtype), getattr(head, "token_ids", None)
        self.n_layers = len(self.layers)
        self.ops = NativeOps(self, self.kernels) if self.kernels is not None else TorchOps(self)
        self.capacity = 0
        self._grow(max(int(capacity), 16))
        self.compile_info = {"backend": "packed", "dtype": dtype_name(self.dtype), **self._kernels()}
        self.fits_cache = False  # runtime.keep_warm = "auto" (verifier.py): the own kernels' weights in the cache
        self.weights_bytes: int | None = None  # own kernels: what a forward streams, scales included
        if self.kernels is not None:
            linears = [*(lin for layer in self.layers for lin in layer.linears()), self.head]
            self.weights_bytes = sum(
                lin.weight.nbytes + (0 if lin.scale is None else lin.scale.nbytes) for lin in linears
            )
            self.fits_cache = self.weights_bytes <= last_level_cache_bytes()
            self.compile_info["weights_mb"] = round(self.weights_bytes / 2**20, 1)
        if why_not:
            self.compile_info["native_kernels"] = why_not
        self.compile_info.update(check_against_hf(self))

    def _linear(self, weight, bias, dtype=None):
        """A product in the weights' dtype (the head in fp32: logits in fp32 whatever the dtype; a quantized
        drafter's in int8, its logits still summed in fp32)."""
        dtype = dtype or self.dtype
        if self.kernels is not None:
            return NativeLinear(weight, bias, dtype, self.kernels)
        return OneDnnLinear(weight, bias)

    def _kernels(self) -> dict:
        """Which kernels run the products: the project's own (one per model), or oneDNN's with plain weights for
        the narrow widths where they won at load, timed for the layers and the head apart (packed_linear.py)."""
        if self.kernels is not None:
            return {"kernels": "native", **self.kernels.info}
        layers = [linear for layer in self.layers for linear in layer.linears()]
        return {
            "kernels": "onednn",
            "plain_rows_layers": choose_plain_rows(layers),
            "plain_rows_head": choose_plain_rows([self.head]),
        }

    # ------------------------------------------------------------------ static cache
    def _grow(self, needed: int) -> None:
        """Buffers for `needed` positions (doubling): keys, values, rotary tables, the causal mask, scores."""
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        shape = (self.n_layers, self.kv_heads, capacity, self.head_dim)
        keys, values = torch.zeros(shape), torch.zeros(shape)
        if self.capacity:
            keys[:, :, : self.capacity], values[:, :, : self.capacity] = self.keys, self.values
        self.keys, self.values = keys, values
        positions = torch.arange(capacity)
        with torch.inference_mode():
            cos, sin = self.model.base_model.rotary_emb(torch.zeros(1), positions[None])
        self.cos_table, self.sin_table = cos[0].contiguous(), sin[0].contiguous()  # (position, head_dim)
        self.mask = positions[None, :] <= positions[:, None]  # mask[query, key]: the key is visible
        self.scores = torch.empty(capacity)
        self.capacity = capacity

    def _crop(self, length: int) -> None:
        """Nothing to do: positions past `length` are overwritten by the next forward."""

    def idle_forward(self, stop: Callable[[], bool]) -> None:
        """A throwaway forward of the last cached token, one position past the cache, abandoned at the first
        layer where `stop()` is true: it writes only past the cache's end (the next forward overwrites that)
        and changes nothing the runner records. Why: on a CPU a forward after a millisecond of waiting ran
        1.3x slower than back to back (docs/backends.md, "keep_warm")."""
        if not self.tokens:
            return
        callback = self._layer_callback

        def check():
            if stop():
                raise _Idle

        self._layer_callback = check
        try:
            self._forward(self.tokens[-1:], 1)
        except _Idle:
            pass
        finally:
            self._layer_callback = callback

    # ------------------------------------------------------------------ the forward
    @torch.inference_mode()
    def _forward(self, tokens: list[int], n_out: int) -> torch.Tensor:
        start, n, ops = len(self.tokens), len(tokens), self.ops
        self._grow(start + n)
        x, h = ops.embed_norm(tokens, self.layers[0].norm1)
        for index in range(self.n_layers):
            if self._layer_callback is not None:
                self._layer_callback()
            after = self.layers[index + 1].norm1 if index + 1 < self.n_layers else self.norm
            h = ops.layer(x, h, index, start, after)
        return self._logits(h[n - n_out :])

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        scores = self.head(h)
        if self.head_rows is None:
            return scores
        out = scores.new_full((scores.shape[0], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.head_rows, scores)

    def _argmax(self, scores: torch.Tensor, first_position: int) -> np.ndarray:
        return self.ops.argmax(scores)


def check_against_hf(runner: PackedRunner) -> dict:
    """The runner's logits against the Hugging Face model's own forward on a short random sequence, fed in
    two chunks as verifications are: within 1e-4 of the largest logit (other kernels round in another order).
    The reference is the model in fp32 (bf16 weights widened: exactly what this runner computes with; Hugging
    Face's bf16 forward also rounds every activation to bf16, which this runner does not). A wrong rotary
    table, mask or cache gives errors of the logits' own size. Also records whether the tokens' logits are the
    same bit for bit fed one at a time as all at once (`batch_invariant`: then a verification sees exactly
    what plain decoding sees)."""
    from transformers import DynamicCache

    seq = [int(t) for t in np.random.default_rng(0).integers(0, runner.vocab_size, size=11)]
    exact = runner.dtype in (torch.float32, torch.int8, INT4)  # int8, int4: the model holds the same q * s in fp32
    reference = runner.model if exact else copy.deepcopy(runner.model).float()
    with torch.inference_mode():
        ids = torch.tensor([seq])
        ref = reference(input_ids=ids, use_cache=True, **{runner.cache_kw: DynamicCache()}).logits[0].float()
        got = torch.cat([runner.forward(seq[:8], 8), runner.forward(seq[8:], 3)])
        runner.crop(8)
        single = torch.cat([runner.forward([t], 1) for t in seq[8:]])
    del reference
    runner.reset()
    runner.computed_tokens = runner.forward_calls = 0
    kept = torch.isfinite(got[0])  # a restricted drafter head scores some rows only
    got, ref, single_rows = got[:, kept], ref[:, kept], single[:, kept]
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    if not err <= 1e-4:
        raise UnsupportedModel(
            f"packed logits differ from Hugging Face's (max |diff| / max |logit| = {err:.3g} > 1e-4)"
        )
    return {"check_error": round(err, 7), "batch_invariant": bool(torch.equal(single_rows, got[8:]))}
