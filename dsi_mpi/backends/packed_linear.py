"""Linear layers whose weights are packed once, at load, for oneDNN: a verification of n tokens then costs
about what one token costs.

Why: a CPU forward streams every weight matrix from memory. Given a plain (unpacked) weight, a product of one
row is a matrix-vector product that streams the weight once, but a product of several rows repacks the whole
weight into the kernel's blocked layout on every call: on one core of an AMD EPYC a SmolLM2-135M forward of 2
tokens took 1.5x one token in fp32 (../shared/notes/PLATFORM.md). Packed once, the weight is streamed once per
call whatever the rows: T(n) is nearly flat in n, as on a GPU, which is what speculation needs.

Which kernel is faster for few rows depends on the CPU and its BLAS: on an Intel Ice Lake core MKL's plain
products of 1-2 rows beat the packed ones (SmolLM2's matrices in fp32: 47 ms against 56 ms at 1 row), while on
the AMD core the plain fp32 head took 14.9 ms at 1 row against 3.5 ms packed. So `choose_plain_rows` times both,
for every width up to MAX_ROWS, on enough of the model's matrices to stream them from memory as a forward does,
and the plain weight serves the widths 1..m where it won by MARGIN (a prefix: repacking costs more the wider
the product, so past the first width where packed wins, plain does not win again but by noise). nonsi's one-token step gets the faster of the two,
never a slower one; the widths chosen are recorded.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

PACK_ROWS = 8  # oneDNN's layout hint (rows expected per call): 4-16 measured alike, 1 slower past 1 row
MAX_ROWS = 16  # widths timed at load; wider products (prefills) always run packed
MARGIN = 0.05  # plain products must beat packed ones by this much for a width
SAMPLE_BYTES = 64 << 20  # matrices timed per width: more than a core's caches, so weights stream from memory
ROUNDS = 5


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear:
    """y = x W^T + b for x of shape (rows, in), W packed for oneDNN; the widths in `plain_rows` through the plain
    W instead (set by `choose_plain_rows`; the plain W is dropped when no width uses it)."""

    __slots__ = ("packed", "plain", "bias", "plain_rows")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        weight = weight.detach().contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
        self.plain: torch.Tensor | None = weight
        self.bias = None if bias is None else bias.detach().contiguous()
        self.plain_rows: frozenset[int] = frozenset()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] in self.plain_rows:
            return F.linear(x, self.plain, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        if kernel == "plain":
            return F.linear(x, self.plain, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def use_plain_for(self, rows: frozenset[int]) -> None:
        self.plain_rows = rows
        if not rows:
            self.plain = None


def _sample(linears: list[PackedLinear]) -> tuple[list[PackedLinear], int]:
    """The first matrices that add up to SAMPLE_BYTES (all of them in a smaller model), and their bytes."""
    out, total = [], 0
    for linear in linears:
        out.append(linear)
        total += linear.plain.numel() * linear.plain.element_size()
        if total >= SAMPLE_BYTES:
            break
    return out, total


def choose_plain_rows(linears: list[PackedLinear], dtype: torch.dtype) -> dict:
    """For widths 1, 2, ... time a pass over a sample of `linears` with plain and with packed weights until
    packed wins; give every linear the widths where plain won, and return the record:
    {"plain_rows": [...], "sample_mb": ..., "ms": {width: [plain, packed]}} (the widths timed)."""
    sample, sample_bytes = _sample(linears)
    widths = {lin.plain.shape[1] for lin in sample}
    median: dict[int, list[float]] = {}
    with torch.inference_mode():
        for rows in range(1, MAX_ROWS + 1):  # plain's lead only shrinks with width: stop where it ends
            median[rows] = _time_pass(sample, {n: torch.randn(rows, n, dtype=dtype) for n in widths})
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


def _time_pass(sample: list[PackedLinear], inputs: dict[int, torch.Tensor]) -> list[float]:
    """Median seconds of one pass over `sample` with plain, and with packed weights (rounds interleaved)."""
    seconds: dict[str, list[float]] = {"plain": [], "packed": []}
    for _ in range(ROUNDS):
        for kernel, times in seconds.items():
            start = time.perf_counter()
            for linear in sample:
                linear.run(inputs[linear.plain.shape[1]], kernel)
            times.append(time.perf_counter() - start)
    return [sorted(times)[len(times) // 2] for times in seconds.values()]
