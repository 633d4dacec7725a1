"""The packed backend's small steps between its products, two ways with one interface: the project's C kernels
(`NativeOps`, one call per step: a step of torch operations costs 5-10 us per operation on a CPU, 40 us for an
RMSNorm, and they added up to a third of a SmolLM2 step), or torch (`TorchOps`, where the kernels are not used).

The steps, for a block of n tokens at positions start..start+n-1 of layer `index`:
- embed_norm(tokens, weight): the tokens' embeddings as fp32 x (n, hidden), and h = RMSNorm(x) by `weight`.
- add_norm(x, delta, weight): x += delta (unless None), then Llama's RMSNorm of x; x is (n, hidden) fp32.
- rope_cache(qkv, index, start): rotate the block's queries and keys, write keys and values into the cache;
  returns the queries, (n, heads, head_dim).
- attention(q, index, start): causal attention over the cache; returns (n, heads * head_dim).
- silu_mul(gate_up): SiLU(gate) * up of the fused product's two halves.
- layer(x, h, index, start, after): the whole decoder layer from those steps: h (normed input) in, x updated
  and h = RMSNorm(x) by `after` out. Natively one C call (kernels.c `dsi_layer`: the same steps in the same
  order, so the same numbers), where no product's input needs padding.
- argmax(scores): each row's greedy token (the first of equal scores), as numpy int64.
The native steps compute each row on its own, the same way whatever n is (batch invariance, kernels.c).
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
import torch.nn.functional as F

from dsi_mpi.backends.quantize import INT4


def compose_layer(ops, x: torch.Tensor, h: torch.Tensor, index: int, start: int, after: torch.Tensor):
    """A decoder layer step by step (see the module docstring)."""
    layer = ops.runner.layers[index]
    q = ops.rope_cache(layer.qkv(h), index, start)
    h = ops.add_norm(x, layer.o(ops.attention(q, index, start)), layer.norm2)
    return ops.add_norm(x, layer.down(ops.silu_mul(layer.gate_up(h))), after)


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class NativeOps:
    KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2, INT4: 3}  # kernels.c LayerArgs.kind

    def __init__(self, runner, kernels):
        self.runner, self.k = runner, kernels
        self.fused = all(lin.padded == lin.width for layer in runner.layers for lin in layer.linears())
        self._ffn = runner.layers[0].down.width
        self._args: list = []  # one LayerArgs per layer, remade when the cache grows (its buffers move)
        self._capacity = -1
        self._work = torch.empty(0)  # the layer call's scratch (see `layer`)

    def layer(self, x: torch.Tensor, h: torch.Tensor, index: int, start: int, after: torch.Tensor):
        """One C call (h is written in place), or the steps where a product's input would need padding."""
        if not self.fused:
            return compose_layer(self, x, h, index, start, after)
        r = self.runner
        if self._capacity != r.capacity:
            self._args = [self._layer_args(i) for i in range(r.n_layers)]
            self._capacity = r.capacity
        n, d = x.shape[0], r.head_dim
        need = n * ((r.heads + 2 * r.kv_heads) * d + 2 * r.heads * d + x.shape[1] + 3 * self._ffn)
        if self._work.numel() < need:  # scratch of the C call only: one buffer, grown, not one per layer
            self._work = torch.empty(need)
        self.k.layer(
            self._args[index][1], after.data_ptr(), x.data_ptr(), h.data_ptr(), n, start, self._work.data_ptr()
        )
        return h

    def embed_norm(self, tokens: list[int], weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.runner
        n, width = len(tokens), r.embed.shape[1]
        x, h = torch.empty(n, width), torch.empty(n, width)
        kind = self.KINDS[r.embed.dtype]
        ids = (ctypes.c_int64 * n)(*tokens)
        self.k.embed_norm(r.embed.data_ptr(), kind, ids, n, width, weight.data_ptr(), r.eps, x.data_ptr(), h.data_ptr())
        return x, h

    def argmax(self, scores: torch.Tensor) -> np.ndarray:
        out = np.empty(scores.shape[0], dtype=np.int64)
        self.k.argmax(scores.data_ptr(), scores.shape[0], scores.shape[1], out.ctypes.data)
        return out

    def _layer_args(self, index: int) -> tuple:
        """(the LayerArgs, its address) for layer `index`; the struct holds pointers only, the runner the data."""
        from dsi_mpi.backends.native import LayerArgs

        r, layer = self.runner, self.runner.layers[index]
        args = LayerArgs(
            self.KINDS[r.dtype], layer.o.rows, r.heads, r.kv_heads, r.head_dim, self._ffn, r.capacity, r.eps,
            r.scale, r.cos_table.data_ptr(), r.sin_table.data_ptr(), r.scores.data_ptr(), r.keys[index].data_ptr(),
            r.values[index].data_ptr(), *(lin.weight.data_ptr() for lin in layer.linears()),
            *(_address(lin.scale) for lin in layer.linears()), _address(layer.qkv.bias), _address(layer.o.bias),
            layer.norm2.data_ptr(),
        )  # fmt: skip
        return args, ctypes.addressof(args)

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        d = None if delta is None else delta.data_ptr()
        self.k.add_rms_norm(x.data_ptr(), d, x.shape[0], x.shape[1], weight.data_ptr(), self.runner.eps, out.data_ptr())
        return out

    def rope_cache(self, qkv: torch.Tensor, index: int, start: int) -> torch.Tensor:
        r = self.runner
        q = torch.empty(qkv.shape[0], r.heads, r.head_dim)
        self.k.rope_cache(
            qkv.data_ptr(), qkv.shape[0], r.heads, r.kv_heads, r.head_dim, r.cos_table.data_ptr(),
            r.sin_table.data_ptr(), start, r.keys[index].data_ptr(), r.values[index].data_ptr(), r.capacity,
            q.data_ptr(),
        )  # fmt: skip
        return q

    def attention(self, q: torch.Tensor, index: int, start: int) -> torch.Tensor:
        r = self.runner
        n = q.shape[0]
        out = torch.empty(n, r.heads * r.head_dim)
        self.k.attention(
            q.data_ptr(), n, r.heads, r.kv_heads, r.head_dim, r.keys[index].data_ptr(), r.values[index].data_ptr(),
            r.capacity, start, r.scale, out.data_ptr(), r.scores.data_ptr(),
        )  # fmt: skip
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        ffn = gate_up.shape[1] // 2
        out = torch.empty(gate_up.shape[0], ffn)
        self.k.silu_mul(gate_up.data_ptr(), gate_up.shape[0], ffn, out.data_ptr())
        return out


class TorchOps:
    def __init__(self, runner):
        self.runner = runner

    def layer(self, x: torch.Tensor, h: torch.Tensor, index: int, start: int, after: torch.Tensor):
        return compose_layer(self, x, h, index, start, after)

    def embed_norm(self, tokens: list[int], weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.embedding(torch.tensor(tokens), self.runner.embed).float()
        return x, self.add_norm(x, None, weight)

    def argmax(self, scores: torch.Tensor) -> np.ndarray:
        return scores.argmax(dim=-1).to(torch.int64).numpy()

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        if delta is not None:
            x.add_(delta)
        return weight * (x * torch.rsqrt(x.square().mean(-1, keepdim=True).add_(self.runner.eps)))

    def rope_cache(self, qkv: torch.Tensor, index: int, start: int) -> torch.Tensor:
        r = self.runner
        n, d, heads, kv = qkv.shape[0], r.head_dim, r.heads, r.kv_heads
        qk = qkv[:, : (heads + kv) * d].view(n, heads + kv, d)
        cos, sin = r.cos_table[start : start + n, None], r.sin_table[start : start + n, None]
        qk = qk * cos + torch.cat((-qk[..., d // 2 :], qk[..., : d // 2]), dim=-1) * sin
        r.keys[index, :, start : start + n] = qk[:, heads:].transpose(0, 1)
        r.values[index, :, start : start + n] = qkv[:, (heads + kv) * d :].view(n, kv, d).transpose(0, 1)
        return qk[:, :heads]

    def attention(self, q: torch.Tensor, index: int, start: int) -> torch.Tensor:
        r = self.runner
        n, end = q.shape[0], start + q.shape[0]
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            r.keys[index, :, :end][None],
            r.values[index, :, :end][None],
            attn_mask=None if n == 1 else r.mask[start:end, :end],
            scale=r.scale,
            enable_gqa=r.heads != r.kv_heads,
        )
        return out[0].transpose(0, 1).reshape(n, r.heads * r.head_dim)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
