"""`dsi-mpi run`: one MPI job, every algorithm on the same prompts, results to HDF5.

Rank 0 is the drafter and coordinator, ranks 1..N-1 hold the target and verify. With runtime.instances =
G >= 2, rank 0 is the scheduler and writer instead, and ranks 1..N-1 form G such instances, each on its
own communicator (dsi_mpi/mpi/instances.py, dsi_mpi/batch.py). Algorithms are
interleaved per prompt (in an order rotated per prompt, so none always runs first) after untimed
warm-up runs of each, and every record is flushed to the results file as soon as its prompt is done.
Any error on any rank prints one line naming the rank and aborts the whole job (MPI Abort), so that
mpiexec and srun return non-zero instead of hanging.
"""

from __future__ import annotations

import os
import platform
import signal
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
    if cfg.runtime.instances > 1:
        from dsi_mpi.mpi.instances import check_size

        try:
            check_size(size, cfg.runtime.instances, cfg.runtime.pipeline_stages, cfg.runtime.pipeline_groups)
        except ConfigError as err:
            if rank == 0:
                logger.error("%s", err)
            return EXIT_BAD_INPUT
    state: dict = {}  # the placement and poller once known, so that a failure can reach the scheduler
    try:
        return _run_ranks(cfg, comm, state)
    except ConfigError as err:
        _fail(comm, state, str(err), EXIT_BAD_INPUT)
    except BaseException as err:  # noqa: BLE001 - any failure must take the whole job down, not hang it
        if os.environ.get("DSI_MPI_TRACEBACK"):
            traceback.print_exc()
        _fail(comm, state, f"{type(err).__name__}: {err}", EXIT_FAILURE)
    return EXIT_FAILURE


def _fail(comm, state: dict, text: str, code: int) -> None:
    """One error line naming the rank (and its instance), the scheduler told when there is one, then Abort."""
    placement = state.get("placement")
    if placement is not None and placement.instance >= 0:
        text = f"{text} [{placement.describe(comm.Get_rank())}]"
    logger.error("%s", text)
    if placement is not None and placement.instance >= 0:
        from dsi_mpi.batch import tell_scheduler

        tell_scheduler(placement, state["poller"], comm.Get_rank(), text, code)
    log.drain_before_abort()
    comm.Abort(code)


def _run_ranks(cfg, world, state: dict) -> int:
    from dsi_mpi.backends.loading import build_runner, gpu_identity
    from dsi_mpi.mpi import startup
    from dsi_mpi.mpi.channel import Channel
    from dsi_mpi.mpi.polling import poller_from_config, spin_for_node

    rank = world.Get_rank()
    _set_threads(cfg["models"]["threads"])
    import torch

    torch.manual_seed(cfg["decoding"]["seed"])
    poller = state["poller"] = poller_from_config(cfg.runtime)

    session, error = None, None
    if rank == 0:
        signal.signal(signal.SIGTERM, _terminated)  # srun's kill of a failed step: close the file first
        try:
            from dsi_mpi.session import Session

            session = Session.prepare(cfg)
            from dsi_mpi.decoding.placement import check_pipeline

            check_pipeline(cfg, world.Get_size())
        except ConfigError as err:
            error = str(err)
            logger.error("%s", err)
    if startup.share_verdict(world, poller, error is not None):
        return EXIT_BAD_INPUT

    placement = None
    if cfg.runtime.instances > 1:
        from dsi_mpi.mpi.instances import split

        r = cfg.runtime
        placement = state["placement"] = split(world, poller, r.instances, r.pipeline_stages, r.pipeline_groups)
        log.setup(rank=rank, instance=placement.instance)
    comm = world if placement is None else placement.comm  # None on the scheduler
    local = comm.Get_rank() if comm is not None else -1
    layout, group, stage = _verifier_layout(cfg, comm, placement, poller)
    role = _role(local, group, stage, placement)
    local_rank = startup.local_rank(world)  # a collective: every rank, once
    threads_on_node, cores_on_node = startup.node_cores(world, poller, cfg["models"]["threads"])  # collective
    if comm is not None:  # the scheduler rank holds no core: it keeps the short spin
        poller.spin_s = spin_for_node(cfg.runtime.poll_spin_s, threads_on_node, cores_on_node)
    longest = max(map(len, session.prompt_tokens.values()), default=1) if rank == 0 else 0
    longest = startup.share_int(world, poller, longest, "the prompt lengths from rank 0")  # sizes static caches
    runner = (
        None if comm is None else build_runner("drafter" if local == 0 else "target", cfg, local_rank, longest, stage)
    )
    if stage and hasattr(runner, "layers"):
        role += f", layers {runner.layers[0]}..{runner.layers[1] - 1}"
    kind = cfg["models"]["device"] if cfg["models"]["kind"] == "hf" else "emulated"
    device = "none" if runner is None else str(getattr(runner, "device", kind))
    extra = {"poll_spin_s": poller.spin_s, "node_threads": threads_on_node, "node_cores": cores_on_node}
    if gpu_identity(getattr(runner, "device", None)):  # the physical GPU: tells ranks that share one
        extra["gpu"] = gpu_identity(runner.device)
    if placement is not None:
        extra["instance"] = placement.instance
    backend = getattr(runner, "compile_info", None) or {}
    infos = startup.gather_rank_info(world, poller, role, device, backend=backend, **extra)
    startup.barrier(world, poller, "every rank to load its model")
    metadata = _metadata(cfg, infos, runner) if rank == 0 else {}
    if comm is None:
        from dsi_mpi.batch import Scheduler

        Scheduler(session, placement, poller, infos, metadata).run()
        return 0
    from dsi_mpi.mpi.clock import measure_offsets

    offsets = measure_offsets(comm, poller)
    channel = Channel(comm, poller)
    if local != 0:
        from dsi_mpi.decoding.acceptance import rule_from_config
        from dsi_mpi.decoding.verifier import Verifier

        if stage:
            from dsi_mpi.decoding.pipeline import Stage

            Stage(channel, runner, group, stage[0], rule_from_config(cfg.decoding), fault_rank=rank).serve()
            return 0
        assistant = None
        if "hf_assisted" in cfg["decoding"]["algorithms"]:
            assistant = _lazy_assistant(cfg, local_rank, runner.compile_info.get("dtype", cfg["models"]["dtype"]))
        Verifier(channel, runner, assistant, rule_from_config(cfg.decoding), fault_rank=rank).serve()
        return 0
    feed = _feed(cfg, session, placement, poller, infos, metadata, offsets, layout)
    if placement is not None:
        from dsi_mpi.session import Session

        setup = feed.setup()
        prompts = [p for p, _ in setup["prompts"]]
        session = Session(cfg, prompts, {p.index: t for p, t in setup["prompts"]}, setup["eos_ids"], None)
    try:
        session.run(channel, runner, feed, offsets, fault_rank=rank, layout=layout)
    finally:
        from dsi_mpi.decoding.verifier import stop_verifiers

        stop_verifiers(channel)
    return 0


def _verifier_layout(cfg, comm, placement, poller):
    """(this instance's verifiers in its own ranks: plain ranks and tuples of pipeline stage ranks, or None when
    every one is plain; this rank's group; its (stage index, stages) if it is a pipeline stage). One instance:
    the groups placed on nodes here (a collective: every rank); several: by the instance placement."""
    if cfg.runtime.pipeline_stages <= 1 or comm is None:
        return None, (), None
    if placement is not None:
        layout = placement.layout
    else:
        from dsi_mpi.decoding.placement import plan_layout, spans_nodes
        from dsi_mpi.mpi import startup

        nodes = startup.node_ids(comm, poller)
        layout = plan_layout(nodes, cfg.runtime.pipeline_stages, cfg.runtime.pipeline_groups)
        if comm.Get_rank() == 0 and spans_nodes(layout, nodes):
            logger.warning(f"pipeline groups {spans_nodes(layout, nodes)} span nodes: no node had room for all stages")
    local = comm.Get_rank()
    group = next((g for g in layout if local in g), ())
    return layout, group, (group.index(local), len(group)) if len(group) > 1 else None


def _role(local: int, group: tuple, stage, placement) -> str:
    """This rank's part, for the file's `ranks` and error lines (a group named by its world ranks)."""
    if local < 0:
        return "scheduler+writer"
    if local == 0:
        return "drafter+coordinator"
    if not stage:
        return "target verifier"
    ranks = [placement.members[i] for i in group] if placement is not None else list(group)
    return f"target stage {stage[0] + 1}/{stage[1]} of group {ranks}"


def _terminated(signum, frame):
    """SIGTERM on the writing rank (srun ends a step whose rank died with SIGTERM, then SIGKILL): leave by an
    exception, so the results file is closed whole (Python runs this between two HDF5 calls, never inside)."""
    raise SystemExit(f"terminated by signal {signum}")


def _metadata(cfg, infos: list[dict], runner) -> dict:
    """Root attributes known once every rank has started (written by rank 0; `runner` is its drafter, or
    None on the scheduler rank of a many-instance job)."""
    from dsi_mpi.backends.loading import drafter_vocabulary
    from dsi_mpi.io.drafter_spec import parse_drafter

    spec = parse_drafter(cfg["models"]["drafter"])
    backends = [{"rank": info["rank"], "role": info["role"], **info.pop("backend")} for info in infos]
    _report_backends(backends)
    from dsi_mpi.reporting.metrics import shared_gpus

    for group in shared_gpus(infos):
        logger.warning(
            f"ranks {group['ranks']} share one GPU ({group['gpu']} on {group['host']}): without MPS they take turns "
            "on it, so si and dsi figures are a FUNCTIONAL CHECK only (launch one rank per GPU to measure them)"
        )
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
            "vocabulary": drafter_vocabulary(cfg, runner),  # "shared", or token-level intersection (backends/tli.py)
        },
        "algorithms": cfg["decoding"]["algorithms"],
        "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
    }


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


def _drafter_layers(cfg, spec, runner) -> int:
    """The drafter's decoder layers (rank 0 reads replies between them; the time model needs the count)."""
    if runner is not None:
        return max(1, int(runner.n_layers))  # the n-gram drafter has none
    if cfg["models"]["kind"] == "emulated":
        from dsi_mpi.backends.emulated import SLICES

        return SLICES
    if spec.kind != "model":
        return int(spec.params.get("layers", 1))
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(spec.model), "num_hidden_layers", 1))


def _feed(cfg, session, placement, poller, infos, metadata, offsets, layout):
    """Where the coordinator's prompts come from and its records go (dsi_mpi/batch.py)."""
    from dsi_mpi import batch

    if placement is not None:
        feed = batch.RemoteFeed(placement.queue, poller, cfg.runtime.timeout_s)
        feed.add_metadata({"clock_offsets_us": offsets})
        return feed
    ranks, hosts = [i["rank"] for i in infos], [i["host"] for i in infos]
    feed = batch.LocalFeed(session, ranks, hosts)
    entry = batch.layout_entry(0, ranks, layout, dict(zip(ranks, hosts)))
    if entry["groups"]:
        logger.info(batch.describe_entry(entry, infos))
    scheduler = {"policy": batch.LOCAL_POLICY, "instances": 1, "writer_rank": 0, "layout": [entry]}
    feed.add_metadata(metadata | {"clock_offsets_us": offsets, "scheduler": scheduler})
    return feed


def _lazy_assistant(cfg, local_rank: int, dtype: str):
    """hf_assisted needs the drafter next to the target; load it on first use only (its runner: the model, and
    for a drafter of another vocabulary the two tokenizers Hugging Face's generate then takes), in `dtype`, the
    dtype the target runs (models.dtype = "auto" resolves per backend)."""
    cache = {}

    def factory():
        if "runner" not in cache:
            from dsi_mpi.backends.loading import build_runner

            eager = {
                "models": dict(cfg["models"], backend="eager", dtype=dtype),
                "decoding": cfg["decoding"],
            }  # HF generate is eager
            cache["runner"] = build_runner("drafter", eager, local_rank)
        return cache["runner"]

    return factory
