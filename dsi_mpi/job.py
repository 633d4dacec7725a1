"""`dsi-mpi run`: one MPI job, every algorithm on the same prompts, results to HDF5.

Rank 0 is the drafter and coordinator, ranks 1..N-1 hold the target and verify. Algorithms are
interleaved per prompt (in an order rotated per prompt, so none always runs first) after untimed
warm-up runs of each, and every record is flushed to the results file as soon as its prompt is done.
Any error on any rank prints one line naming the rank and aborts the whole job (MPI Abort), so that
mpiexec and srun return non-zero instead of hanging.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

from dsi_mpi import log
from dsi_mpi.io.config import ConfigError

logger = log.get("job")

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


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


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_job(cfg) -> int:
    """Entry point on every rank; returns the exit status (or never returns: MPI Abort)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    log.setup(rank=rank)  # the launcher's variables may be missing (singleton start): MPI knows the rank
    if size < 2:
        if rank == 0:
            logger.error(
                f"needs at least 2 MPI ranks (1 drafter + verifiers), got {size}: "
                "launch with mpiexec -n N python -m dsi_mpi run CONFIG (N >= 2)"
            )
        return EXIT_BAD_INPUT
    try:
        return _run_ranks(cfg, comm)
    except ConfigError as err:
        logger.error("%s", err)
        comm.Abort(EXIT_BAD_INPUT)
    except BaseException as err:  # noqa: BLE001 - any failure must take the whole job down, not hang it
        if os.environ.get("DSI_MPI_TRACEBACK"):
            traceback.print_exc()
        logger.error("%s: %s", type(err).__name__, err)
        comm.Abort(EXIT_FAILURE)
    return EXIT_FAILURE


def _run_ranks(cfg, comm) -> int:
    from dsi_mpi.backends.loading import build_runner
    from dsi_mpi.mpi import startup
    from dsi_mpi.mpi.channel import Channel
    from dsi_mpi.mpi.polling import poller_from_config

    rank = comm.Get_rank()
    _set_threads(cfg["models"]["threads"])
    import torch

    torch.manual_seed(cfg["decoding"]["seed"])
    poller = poller_from_config(cfg.runtime)

    session, error = None, None
    if rank == 0:
        try:
            from dsi_mpi.session import Session

            session = Session.prepare(cfg)
            from dsi_mpi.decoding.placement import check_pipeline

            check_pipeline(cfg, comm.Get_size())
        except ConfigError as err:
            error = str(err)
            logger.error("%s", err)
    if startup.share_verdict(comm, poller, error is not None):
        return EXIT_BAD_INPUT

    from dsi_mpi.decoding.placement import plan_layout, spans_nodes

    nodes = startup.node_ids(comm, poller)  # collectives: every rank, once
    layout = plan_layout(nodes, cfg.runtime.pipeline_stages, cfg.runtime.pipeline_groups)
    group = next((g for g in layout if rank in g), ())
    stage = (group.index(rank), len(group)) if len(group) > 1 else None
    if rank == 0 and spans_nodes(layout, nodes):
        logger.warning(
            f"pipeline groups {spans_nodes(layout, nodes)} span nodes: no node had room for all their stages"
        )
    role = "drafter+coordinator" if rank == 0 else "target verifier"
    if stage:
        role = f"target stage {stage[0] + 1}/{stage[1]} of group {list(group)}"
    local_rank = startup.local_rank(comm)
    runner = build_runner("drafter" if rank == 0 else "target", cfg, local_rank, stage)
    if stage and hasattr(runner, "layers"):
        role += f", layers {runner.layers[0]}..{runner.layers[1] - 1}"
    device = str(getattr(runner, "device", cfg["models"]["device"] if cfg["models"]["kind"] == "hf" else "emulated"))
    infos = startup.gather_rank_info(comm, poller, role, device)
    startup.barrier(comm, poller, "every rank to load its model")
    from dsi_mpi.mpi.clock import measure_offsets

    offsets = measure_offsets(comm, poller)
    channel = Channel(comm, poller)
    if rank != 0:
        from dsi_mpi.decoding.acceptance import rule_from_config
        from dsi_mpi.decoding.verifier import Verifier

        if stage:
            from dsi_mpi.decoding.pipeline import Stage

            Stage(channel, runner, group, stage[0], rule_from_config(cfg.decoding)).serve()
            return 0
        assistant = None
        if "hf_assisted" in cfg["decoding"]["algorithms"]:
            assistant = _lazy_assistant(cfg, local_rank)
        Verifier(channel, runner, assistant, rule_from_config(cfg.decoding)).serve()
        return 0
    from dsi_mpi.io.drafter_spec import parse_drafter

    spec = parse_drafter(cfg["models"]["drafter"])
    metadata = {
        "versions": _versions(),
        "git_commit": _git_commit(),
        "ranks": infos,
        "drafter": {"kind": spec.kind, "model": spec.model, "params": spec.params},
        "algorithms": cfg["decoding"]["algorithms"],
        "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "clock_offsets_us": offsets,
    }
    try:
        session.run(channel, runner, metadata, offsets, layout)
    finally:
        from dsi_mpi.decoding.verifier import stop_verifiers

        stop_verifiers(channel)
    return 0


def _lazy_assistant(cfg, local_rank: int):
    """hf_assisted needs the drafter next to the target; load it on first use only."""
    cache = {}

    def factory():
        if "model" not in cache:
            from dsi_mpi.backends.loading import build_runner

            cache["model"] = build_runner("drafter", cfg, local_rank).model
        return cache["model"]

    return factory
