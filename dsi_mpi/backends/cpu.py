"""What this CPU is and what it computes fast: the facts that choose the packed backend's dtype.

Why: bf16 halves the bytes a forward streams, which on a CPU core is most of its time. Hugging Face eager and
oneDNN multiply bf16 fast only where the core does it natively (AVX512_BF16 on AMD Zen 4 and Intel Cooper Lake
and later, AMX on Sapphire Rapids and later); elsewhere they emulate it, several times slower than fp32
(measured on an Intel Ice Lake core without AVX512_BF16: `analysis/forward_cost.py`). The packed backend's own
kernels widen bf16 weights to fp32 in registers and need no such instructions. So `models.dtype = "auto"`
takes bf16 where those kernels run the model or these flags say so, and every run records the CPU model and
flags with its figures.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 products (either is enough)
RECORDED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


@lru_cache(maxsize=1)
def cpu_facts(cpuinfo: str | None = None) -> dict:
    """{"model": name, "flags": the RECORDED_FLAGS present, "native_bf16": bool}; from /proc/cpuinfo on Linux
    (elsewhere the flags are unknown and bf16 counts as not native)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    present = set(fields.get("flags", "").split())
    flags = [f for f in RECORDED_FLAGS if f in present]
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "flags": flags,
        "native_bf16": any(f in present for f in BF16_FLAGS),
    }


@lru_cache(maxsize=1)
def last_level_cache_bytes() -> int:
    """The largest CPU cache of core 0 as Linux describes it (the L3, shared by the node's cores), 0 if unknown."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


def resolve_dtype(dtype: str, device: str, own_kernels: bool = False) -> str:
    """models.dtype as run: "auto" is bfloat16 where products in it are fast (the packed backend's own kernels,
    `own_kernels`, which widen bf16 weights in registers on any CPU; a CPU with BF16_FLAGS; a GPU that supports
    it), else float32; any other value is taken as it is."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if own_kernels or cpu_facts()["native_bf16"] else "float32"
