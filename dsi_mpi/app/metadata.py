"""What a results file says about the job that wrote it: each rank's report, gathered at start-up (`rank_report`),
and the root attributes rank 0 writes once every rank has started (`job_metadata`: versions, the git commit,
the backends each rank runs, the drafter, the command line). The start-up lines about backends and shared
GPUs are logged from here too.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from dsi_mpi.io import log
from dsi_mpi.io.config import Config

logger = log.get("job")


def rank_report(cfg: Config, runner, spin_s: float, threads_on_node: int, cores_on_node: int, placement) -> dict:
    """This rank's part of the file's `ranks` (with its role and host, added by the gather) and of `backends`."""
    kind = cfg.models.device if cfg.models.kind == "hf" else "emulated"
    device = "none" if runner is None else str(getattr(runner, "device", kind))
    report = {"device": device, "backend": getattr(runner, "compile_info", None) or {}}
    report |= {"poll_spin_s": spin_s, "node_threads": threads_on_node, "node_cores": cores_on_node}
    from dsi_mpi.backends.loading import gpu_identity

    if gpu_identity(getattr(runner, "device", None)):  # the physical GPU: tells ranks that share one
        report["gpu"] = gpu_identity(runner.device)
    if placement is not None:
        report["instance"] = placement.instance
    return report


def job_metadata(cfg: Config, infos: list[dict], runner) -> dict:
    """Root attributes known once every rank has started (written by rank 0; `runner` is its drafter, or
    None on the scheduler rank of a many-instance job). Takes each rank's backend out of `infos`."""
    from dsi_mpi.backends.checks import drafter_vocabulary
    from dsi_mpi.io.drafter_spec import parse_drafter

    spec = parse_drafter(cfg.models.drafter)
    backends = [{"rank": info["rank"], "role": info["role"], **info.pop("backend")} for info in infos]
    _report_backends(backends)
    _warn_shared_gpus(infos)
    return {
        "backends": backends,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "ranks": infos,
        "drafter": {
            "kind": spec.kind,
            "model": spec.model,
            "params": spec.params,
            "layers": _drafter_layers(cfg, spec, runner),
            # rows of a frequency-ranked drafter head (backends/draft_vocab.py); 0 = the whole vocabulary
            "head_tokens": int(getattr(runner, "head_tokens", None) or 0),
            "vocabulary": drafter_vocabulary(cfg.models, runner),  # "shared", or token-level intersection (tli.py)
        },
        "algorithms": list(cfg.decoding.algorithms),
        "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
    }


def _versions() -> dict:
    import h5py
    import mpi4py
    import numpy
    import torch
    import transformers
    from mpi4py import MPI

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
    }


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def _warn_shared_gpus(infos: list[dict]) -> None:
    from dsi_mpi.reporting.metrics import shared_gpus

    for group in shared_gpus(infos):
        logger.warning(
            f"ranks {group['ranks']} share one GPU ({group['gpu']} on {group['host']}): without MPS they take turns "
            "on it, so si and dsi figures are a FUNCTIONAL CHECK only (launch one rank per GPU to measure them)"
        )


def _report_backends(backends: list[dict]) -> None:
    """One line per rank with a model: the backend and dtype it runs (and why, where it fell back), and what
    compiling cost (at load, never in any algorithm's time)."""
    for b in backends:
        if "backend" not in b:  # the n-gram drafter, the scheduler rank
            continue
        line = f"rank {b['rank']} ({b['role']}): {b['backend']} backend, {b.get('dtype', '?')}"
        if b.get("fallback"):
            logger.warning(f"{line}: {b['fallback']}")
        elif b["backend"] == "compiled":
            logger.info(
                f"{line}, {b['segments']} segment(s), buckets {b['buckets']}: compile {b['compile_s']:.1f} s, "
                f"warm-up {b['warmup_s']:.1f} s (at load, not in any algorithm's time)"
            )
        else:
            logger.info(line + (_packed_kernels(b) if b["backend"] == "packed" else ""))


def _packed_kernels(backend: dict) -> str:
    """How the packed backend runs its products (backends/packed_linear.py)."""
    if backend["kernels"] == "native":
        return f", own kernels (batch invariant: {backend['batch_invariant']})"
    rows = backend["plain_rows_layers"]["plain_rows"]
    plain = f"plain weights for {rows[0]}-{rows[-1]} row(s)" if rows else "all packed"
    return f", oneDNN products ({plain}; own kernels not used: {backend.get('native_kernels', '?')})"


def _drafter_layers(cfg: Config, spec, runner) -> int:
    """The drafter's decoder layers (rank 0 reads replies between them; the time model needs the count)."""
    if runner is not None:
        return max(1, int(runner.n_layers))  # the n-gram drafter has none
    if cfg.models.kind == "emulated":
        from dsi_mpi.backends.emulated import SLICES

        return SLICES
    if spec.kind != "model":
        return int(spec.params.get("layers", 1))
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(spec.model), "num_hidden_layers", 1))
