"""The packed backend's own CPU kernels (kernels.c): compiled for this node's CPU on first use, cached, loaded
with ctypes.

Why compiled here: `-march=native` uses the widest vectors the node has (AVX-512, AVX2, ...), which a wheel
built elsewhere cannot. The build takes about a second with the system's C compiler (`$CC`, else cc or gcc)
and is cached under $XDG_CACHE_HOME/dsi-mpi/kernels (~/.cache/... without it), one build per source, compiler
and CPU (a home folder shared by nodes of different CPUs keeps one build per kind). Ranks that build at once
each write their own file and rename it into place. Without a compiler, or if the build fails, `load` returns
None with the reason and the packed backend uses oneDNN's products instead (recorded in `backends`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from dsi_mpi.backends.cpu import cpu_facts

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC")
_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


class Kernels:
    """The loaded library's functions, with their C signatures set."""

    def __init__(self, lib: ctypes.CDLL, info: dict):
        self.info = info
        for name in ("dsi_linear_f32", "dsi_linear_bf16"):
            getattr(lib, name).argtypes = [_P, _I, _I, _P, _I, _P, _P]
            getattr(lib, name).restype = None
        for name in ("dsi_linear_i8", "dsi_linear_i4"):
            getattr(lib, name).argtypes = [_P, _I, _I, _P, _I, _P, _P, _P]
            getattr(lib, name).restype = None
        self.linear_i8, self.linear_i4 = lib.dsi_linear_i8, lib.dsi_linear_i4
        lib.dsi_attention.argtypes = [_P, _I, _I, _I, _I, _P, _P, _I, _I, _F, _P, _P]
        lib.dsi_attention.restype = None
        lib.dsi_linear_block_rows.restype = _I
        self.block_rows = int(lib.dsi_linear_block_rows())  # the weights' packing (packed_linear.pack_rows)
        lib.dsi_add_rms_norm.argtypes = [_P, _P, _I, _I, _P, _F, _P]
        lib.dsi_rope_cache.argtypes = [_P, _I, _I, _I, _I, _P, _P, _I, _P, _P, _I, _P]
        lib.dsi_silu_mul.argtypes = [_P, _I, _I, _P]
        for fn in (lib.dsi_add_rms_norm, lib.dsi_rope_cache, lib.dsi_silu_mul):
            fn.restype = None
        self.add_rms_norm, self.rope_cache, self.silu_mul = lib.dsi_add_rms_norm, lib.dsi_rope_cache, lib.dsi_silu_mul
        self.linear_f32, self.linear_bf16, self.attention = lib.dsi_linear_f32, lib.dsi_linear_bf16, lib.dsi_attention
        lib.dsi_layer.argtypes = [_P, _P, _P, _P, _I, _I, _P]
        lib.dsi_embed_norm.argtypes = [_P, _I, _P, _I, _I, _P, _F, _P, _P]
        lib.dsi_argmax.argtypes = [_P, _I, _I, _P]
        for fn in (lib.dsi_layer, lib.dsi_embed_norm, lib.dsi_argmax):
            fn.restype = None
        self.layer, self.embed_norm, self.argmax = lib.dsi_layer, lib.dsi_embed_norm, lib.dsi_argmax


class LayerArgs(ctypes.Structure):
    """kernels.c's LayerArgs: one decoder layer's sizes, weights and caches, for `dsi_layer`."""

    _fields_ = [
        *((name, _I) for name in ("kind", "hidden", "heads", "kv_heads", "head_dim", "ffn", "cap")),
        ("eps", _F),
        ("scale", _F),
        *((name, _P) for name in ("cos_table", "sin_table", "scores", "keys", "values")),
        *((name, _P) for name in ("qkv", "o", "gate_up", "down")),
        *((f"{name}_scale", _P) for name in ("qkv", "o", "gate_up", "down")),
        *((name, _P) for name in ("qkv_bias", "o_bias", "norm2")),
    ]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsi-mpi" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@lru_cache(maxsize=1)
def load() -> tuple[Kernels | None, str]:
    """(kernels, "") or (None, why not). Builds into the cache first where needed."""
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler ($CC, cc, gcc or clang) to build the packed backend's kernels"
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    facts = cpu_facts()
    key = hashlib.sha1(
        "\n".join([SOURCE.read_text(), compiler, *version, *FLAGS, facts["model"], *facts["flags"]]).encode()
    ).hexdigest()[:16]
    path = cache_root() / key / "libdsi_kernels.so"
    build_s = 0.0
    if not path.exists():
        start = time.perf_counter()
        problem = _build(compiler, path)
        if problem:
            return None, problem
        build_s = time.perf_counter() - start
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        return None, f"cannot load {path.name}: {err}"
    return Kernels(lib, {"compiler": " ".join([compiler, *version]), "build_s": round(build_s, 2)}), ""


def _build(compiler: str, path: Path) -> str:
    """Compile SOURCE into `path` (via a file of this process, renamed); returns why it failed, or ""."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0][:200]
            return f"building the packed backend's kernels with {compiler} failed: {first}"
        os.replace(tmp, path)
        return ""
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
