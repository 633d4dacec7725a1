"""The packed backend's linear layers: y = x W^T + b for x of shape (rows, in), fp32 in and out, weights fp32 or
bf16, at a cost that hardly grows with the rows (what a verification of k + 1 tokens needs).

Why: a CPU forward streams every weight matrix from memory. Given a plain (unpacked) weight, a product of one row
is a matrix-vector product that streams the weight once, but a product of several rows repacks the whole weight
into the kernel's blocked layout on every call: on one core of an AMD EPYC a SmolLM2-135M forward of 2 tokens
took 1.5x one token in fp32 (../shared/notes/PLATFORM.md). Two ways around it, in order of preference:

- `NativeLinear`: the project's own kernel (kernels.c, built by native.py) streams the weights once for all
  rows (packed at load into one sequential stream, every cache line prefetched), keeps bf16 weights bf16 in
  memory on any CPU (widened in registers), and sums every output in the same order whatever the rows: batch
  invariant. Single-threaded (models.threads = 1, the usual one rank per core). Measured on one Intel Ice Lake
  core (CPU time, SmolLM2-135M's matrices): fp32 50 ms at 1 row, 52 at 5, 57 at 8 (MKL's plain products: 49,
  103, 129); bf16 weights 28 ms at 1 row, 30 at 5 (a whole forward: analysis/forward_cost.py).
- `OneDnnLinear`: weights packed once, at load, for oneDNN (no repacking per call), with the plain weight for
  the narrow products where MKL's plain kernel is faster (measured on an Intel Ice Lake core: 47 ms against
  56 ms for SmolLM2's matrices in fp32 at 1 row; on the AMD core the plain fp32 head took 14.9 ms at 1 row
  against 3.5 ms packed). `choose_plain_rows` times both at load, for widths 1, 2, ... until packed wins, on
  enough of the model's matrices to stream them from memory as a forward does. Used with more than one thread,
  or where the kernels cannot be built; fp32 only (oneDNN multiplies bf16 weights by bf16 inputs, and the packed
  backend keeps activations fp32: bf16 weights without the own kernels run eager).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

LANES = 16  # kernels.c's vector width in floats
PACK_ROWS = 8  # oneDNN's layout hint (rows expected per call): 4-16 measured alike, 1 slower past 1 row
MAX_ROWS = 16  # widths timed at load; wider products (prefills) always run packed
MARGIN = 0.05  # plain products must beat packed ones by this much for a width
SAMPLE_BYTES = 64 << 20  # matrices timed per width: more than a core's caches, so weights stream from memory
ROUNDS = 5


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class NativeLinear:
    """The project's kernel (see the module docstring) over a weight packed at load by `pack_rows`; dtype int8:
    quantized per row (backends/quantize.py), the scales applied to each output."""

    __slots__ = ("weight", "scale", "bias", "rows", "width", "padded", "_run")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, kernels):
        from dsi_mpi.backends.quantize import INT4, quantize_groups, quantize_rows

        self.rows, self.width = (int(n) for n in weight.shape)
        self.scale = None
        if dtype == INT4:
            q, scale = quantize_groups(weight)
            self.weight, self.scale = pack_int4(q, scale, kernels.block_rows)
            self.padded = q.shape[1]
        else:
            if dtype == torch.int8:
                weight, self.scale = quantize_rows(weight)
            self.weight = pack_rows(weight.detach().to(dtype), kernels.block_rows)
            self.padded = self.weight.shape[1] * self.weight.shape[3]  # x's padded width
        self.bias = None if bias is None else bias.detach().float().contiguous()
        runs = {torch.bfloat16: kernels.linear_bf16, torch.int8: kernels.linear_i8, INT4: kernels.linear_i4}
        self._run = runs.get(dtype, kernels.linear_f32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.padded != self.width:
            x = F.pad(x, (0, self.padded - self.width))
        rows = x.shape[0]
        out = torch.empty(rows, self.rows)
        bias = None if self.bias is None else self.bias.data_ptr()
        args = (x.data_ptr(), rows, x.shape[1], self.weight.data_ptr(), self.rows)
        if self.scale is None:
            self._run(*args, bias, out.data_ptr())
        else:
            self._run(*args, self.scale.data_ptr(), bias, out.data_ptr())
        return out


def pack_rows(weight: torch.Tensor, block_rows: int) -> torch.Tensor:
    """The layout kernels.c reads: blocks of `block_rows` rows of W (outputs), each stored input by input, the
    block's weights for one input side by side ([block][k][row][1]), zero-padded to whole blocks: one pass over
    the weights is one sequential stream, and each vector lane sums one output. bf16 goes by pairs of inputs,
    each row's two values side by side ([block][k / 2][row][2]), which the kernel widens with one operation."""
    step = 2 if weight.dtype == torch.bfloat16 else 1
    rows, width = weight.shape
    padded = F.pad(weight, (0, -width % step, 0, -rows % block_rows))
    blocks = padded.view(-1, block_rows, padded.shape[1] // step, step)
    return blocks.permute(0, 2, 1, 3).contiguous()


def pack_int4(q: torch.Tensor, scale: torch.Tensor, block_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """kernels.c's int4 layout: q + 8 two to a byte (inputs k and k + 1 of a row, low and high nibble), blocks of
    `block_rows` rows stored by input pairs ([block][k / 2][row]), padded rows zero (q = 0); the scales by group
    ([block][group][row], padded rows 0)."""
    rows = q.shape[0]
    u = F.pad((q + 8).to(torch.uint8), (0, 0, 0, -rows % block_rows), value=8)
    pairs = u.view(-1, block_rows, u.shape[1] // 2, 2).permute(0, 2, 1, 3)
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()
    scales = F.pad(scale, (0, 0, 0, -rows % block_rows)).view(-1, block_rows, scale.shape[1]).permute(0, 2, 1)
    return packed, scales.contiguous()


class OneDnnLinear:
    """An fp32 W packed for oneDNN; the widths in `plain_rows` through the plain W instead (set by
    `choose_plain_rows`; the plain W is dropped when no width uses it)."""

    __slots__ = ("packed", "plain", "bias", "plain_rows")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        weight = weight.detach().float().contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
        self.plain: torch.Tensor | None = weight
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.plain_rows: frozenset[int] = frozenset()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, "plain" if x.shape[0] in self.plain_rows else "packed")

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        if kernel == "plain":
            return F.linear(x, self.plain, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def use_plain_for(self, rows: frozenset[int]) -> None:
        self.plain_rows = rows
        if not rows:
            self.plain = None


def _sample(linears: list[OneDnnLinear]) -> tuple[list[OneDnnLinear], int]:
    """The first matrices that add up to SAMPLE_BYTES (all of them in a smaller model), and their bytes."""
    out, total = [], 0
    for linear in linears:
        out.append(linear)
        total += linear.plain.numel() * linear.plain.element_size()
        if total >= SAMPLE_BYTES:
            break
    return out, total


def choose_plain_rows(linears: list[OneDnnLinear]) -> dict:
    """For widths 1, 2, ... time a pass over a sample of `linears` with plain and with packed weights until
    packed wins; give every linear the widths where plain won, and return the record:
    {"plain_rows": [...], "sample_mb": ..., "ms": {width: [plain, packed]}} (the widths timed)."""
    sample, sample_bytes = _sample(linears)
    widths = {lin.plain.shape[1] for lin in sample}
    median: dict[int, list[float]] = {}
    with torch.inference_mode():
        for rows in range(1, MAX_ROWS + 1):  # plain's lead only shrinks with width: stop where it ends
            median[rows] = _time_pass(sample, {n: torch.randn(rows, n) for n in widths})
            if not median[rows][0] < (1 - MARGIN) * median[rows][1]:
                break
    plain = frozenset(rows for rows, (p, q) in median.items() if p < (1 - MARGIN) * q)
    for linear in linears:
        linear.use_plain_for(plain)
    return {
        "plain_rows": sorted(plain),
        "sample_mb": round(sample_bytes / 2**20, 1),
        "ms": {rows: [round(1e3 * t, 3) for t in pair] for rows, pair in median.items()},
    }


def _time_pass(sample: list[OneDnnLinear], inputs: dict[int, torch.Tensor]) -> list[float]:
    """Median seconds of one pass over `sample` with plain, and with packed weights (rounds interleaved)."""
    seconds: dict[str, list[float]] = {"plain": [], "packed": []}
    for _ in range(ROUNDS):
        for kernel, times in seconds.items():
            start = time.perf_counter()
            for linear in sample:
                linear.run(inputs[linear.plain.shape[1]], kernel)
            times.append(time.perf_counter() - start)
    return [sorted(times)[len(times) // 2] for times in seconds.values()]
