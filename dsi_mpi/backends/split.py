"""Where to cut a target into pipeline stages, and reading only a stage's tensors from its checkpoint.

A stage holds a contiguous range of decoder layers; the first also holds the embedding, the last the final
norm and the head. The cut minimises the largest stage by parameter count (the embedding and the head
count: in a small model they weigh as much as many layers). Counts come from the safetensors headers,
so planning reads no weights, and each stage then reads its own tensors with plain file reads (no mmap:
nothing but the stage's tensors, one at a time on top of them, is ever resident).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64"}


class SplitError(ValueError):
    """A target that cannot be cut as asked (the message names why)."""


def balanced_split(layers: list[int], first: int, last: int, stages: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) layer ranges, one per stage, each non-empty, minimising the largest stage's
    parameters (layers[i] per layer, `first` more on stage 0, `last` more on the last stage)."""
    n = len(layers)
    if stages > n:
        raise SplitError(f"{stages} pipeline stages but the target has only {n} decoder layers")
    prefix = [0]
    for w in layers:
        prefix.append(prefix[-1] + w)

    def cost(a: int, b: int) -> int:
        return prefix[b] - prefix[a] + (first if a == 0 else 0) + (last if b == n else 0)

    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]  # best[s][b]: layers [0, b) in s stages
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for s in range(1, stages + 1):
        for b in range(s, n - (stages - s) + 1):
            for a in range(s - 1, b):
                value = max(best[s - 1][a], cost(a, b))
                if value < best[s][b]:
                    best[s][b], cut[s][b] = value, a
    ranges, b = [], n
    for s in range(stages, 0, -1):
        ranges.append((cut[s][b], b))
        b = cut[s][b]
    return ranges[::-1]


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class Checkpoint:
    """The tensors of a local safetensors checkpoint (one file or an index of shards), read on demand."""

    def __init__(self, folder: str):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            files = {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        elif (folder / "model.safetensors").exists():
            files = None
        else:
            raise SplitError(f"{folder} holds no safetensors checkpoint (model.safetensors or an index of shards)")
        paths = sorted(set(files.values())) if files else [folder / "model.safetensors"]
        self.entries = {}  # key -> (path, data start, header entry)
        for path in paths:
            header, start = _header(path)
            for key, entry in header.items():
                self.entries[key] = (path, start, entry)

    def numel(self, key: str) -> int:
        shape = self.entries[key][2]["shape"]
        count = 1
        for d in shape:
            count *= d
        return count

    def read_into(self, key: str, out) -> None:
        """Fill the CPU tensor `out` with one tensor: straight from the file into its memory when the dtypes
        agree, else converted 16 MiB at a time (nothing of the size of the tensor is ever allocated twice)."""
        import torch

        path, start, entry = self.entries[key]
        if tuple(entry["shape"]) != tuple(out.shape):
            raise SplitError(f"{path.name}: tensor {key} has shape {tuple(entry['shape'])}, not {tuple(out.shape)}")
        name = SAFETENSORS_DTYPES.get(entry["dtype"])
        if name is None:
            raise SplitError(f"{path.name}: tensor {key} has dtype {entry['dtype']}, which stages cannot load")
        dtype, flat = getattr(torch, name), out.detach().view(-1)
        with open(path, "rb") as f:
            f.seek(start + entry["data_offsets"][0])
            if dtype == out.dtype:
                f.readinto(flat.view(torch.uint8).numpy())
                return
            step = max(1, (16 << 20) // dtype.itemsize)
            for i in range(0, flat.numel(), step):
                n = min(step, flat.numel() - i)
                buf = bytearray(n * dtype.itemsize)
                f.readinto(buf)
                flat[i : i + n].copy_(torch.frombuffer(buf, dtype=dtype))


def layer_prefix(index: int) -> str:
    return f"model.layers.{index}."


def stage_ranges(checkpoint: Checkpoint, n_layers: int, stages: int, tied: bool) -> list[tuple[int, int]]:
    """The balanced cut of a Llama-layout checkpoint (model.embed_tokens, model.layers.i, model.norm,
    lm_head), counted from its headers; a tied head counts again, as the last stage holds its own copy."""
    per_layer = [0] * n_layers
    for key in checkpoint.entries:
        if key.startswith("model.layers."):
            i = int(key.split(".")[2])
            if i < n_layers:
                per_layer[i] += checkpoint.numel(key)
    embed = checkpoint.numel("model.embed_tokens.weight")
    head = embed if tied or "lm_head.weight" not in checkpoint.entries else checkpoint.numel("lm_head.weight")
    norm = checkpoint.numel("model.norm.weight") if "model.norm.weight" in checkpoint.entries else 0
    return balanced_split(per_layer, embed, head + norm, stages)
