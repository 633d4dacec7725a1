"""`dsi-mpi run`: one MPI job, every algorithm on the same prompts, results to HDF5.

Rank 0 is the drafter and coordinator, ranks 1..N-1 hold the target and verify. With runtime.instances =
G >= 2, rank 0 is the scheduler and writer instead, and ranks 1..N-1 form G such instances, each on its
own communicator (dsi_mpi/mpi/instances.py, dsi_mpi/app/scheduler.py). Algorithms are
interleaved per prompt (in an order rotated per prompt, so none always runs first) after untimed
warm-up runs of each, and every record is flushed to the results file as soon as its prompt is done.
Any error on any rank prints one line naming the rank and aborts the whole job (MPI Abort), so that
mpiexec and srun return non-zero instead of hanging.

The steps, in `_run_ranks`: rank 0 checks the inputs (every rank learns the verdict); the ranks split into
instances; each rank learns its place (`Place`: its communicator, its pipeline group and stage, its role),
tunes its poller to its node and loads its model; then it serves as the scheduler, a verifier or a pipeline
stage, or coordinates its instance's prompts.
"""

from __future__ import annotations

import os
import signal
import traceback
from dataclasses import dataclass

from dsi_mpi.app.metadata import job_metadata, rank_report
from dsi_mpi.io import log
from dsi_mpi.io.config import Config, ConfigError

logger = log.get("job")

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def run_job(cfg: Config) -> int:
    """Entry point on every rank; returns the exit status (or never returns: MPI Abort)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    log.setup(rank=rank)  # the launcher's variables may be missing (singleton start): MPI knows the rank
    problem = _size_problem(cfg, size)
    if problem:
        if rank == 0:
            logger.error("%s", problem)
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


def _size_problem(cfg: Config, size: int) -> str | None:
    """Why `size` ranks cannot run this config, if they cannot (said by rank 0 only)."""
    if size < 2:
        return (
            f"needs at least 2 MPI ranks (1 drafter + verifiers), got {size}: "
            "launch with mpiexec -n N python -m dsi_mpi run CONFIG (N >= 2)"
        )
    if cfg.runtime.instances > 1:
        from dsi_mpi.mpi.instances import check_size

        r = cfg.runtime
        try:
            check_size(size, r.instances, r.pipeline_stages, r.pipeline_groups)
        except ConfigError as err:
            return str(err)
    return None


def _fail(comm, state: dict, text: str, code: int) -> None:
    """One error line naming the rank (and its instance), the scheduler told when there is one, then Abort."""
    placement = state.get("placement")
    if placement is not None and placement.instance >= 0:
        text = f"{text} [{placement.describe(comm.Get_rank())}]"
    logger.error("%s", text)
    if placement is not None and placement.instance >= 0:
        from dsi_mpi.app.scheduler import tell_scheduler

        tell_scheduler(placement, state["poller"], comm.Get_rank(), text, code)
    log.drain_before_abort()
    comm.Abort(code)


@dataclass
class Place:
    """Where one rank stands in the job: its instance's communicator (None on the scheduler rank), its rank
    there (-1: the scheduler), the instance's verifiers (plain ranks and tuples of pipeline stage ranks; None
    when every one is plain), this rank's pipeline group and its (stage index, stages), if it is a stage."""

    comm: object
    local: int
    layout: list | None
    group: tuple
    stage: tuple[int, int] | None
    placement: object  # mpi.instances.Placement with runtime.instances >= 2, else None
    node_rank: int = 0  # among the processes on this node: picks the GPU (set once known)
    core_each: bool = False  # every torch thread of this node's ranks has a core of its own (set once known)

    def role(self, layers: tuple[int, int] | None = None) -> str:
        """This rank's part, for the file's `ranks` and error lines (a group named by its world ranks)."""
        if self.local < 0:
            return "scheduler+writer"
        if self.local == 0:
            return "drafter+coordinator"
        if not self.stage:
            return "target verifier"
        ranks = [self.placement.members[i] for i in self.group] if self.placement is not None else list(self.group)
        role = f"target stage {self.stage[0] + 1}/{self.stage[1]} of group {ranks}"
        return role + (f", layers {layers[0]}..{layers[1] - 1}" if layers else "")


def _run_ranks(cfg: Config, world, state: dict) -> int:
    from dsi_mpi.mpi import startup
    from dsi_mpi.mpi.polling import poller_from_config

    _seed_and_threads(cfg)
    poller = state["poller"] = poller_from_config(cfg.runtime)
    session, failed = _check_inputs(cfg, world) if world.Get_rank() == 0 else (None, False)
    if startup.share_verdict(world, poller, failed):
        return EXIT_BAD_INPUT
    placement = state["placement"] = _split_instances(cfg, world, poller)
    place = _place(cfg, world, placement, poller)
    runner, infos = _start_ranks(cfg, world, place, poller, session)
    metadata = job_metadata(cfg, infos, runner) if world.Get_rank() == 0 else {}
    if place.comm is None:
        from dsi_mpi.app.scheduler import Scheduler

        Scheduler(session, placement, poller, infos, metadata).run()
        return 0
    from dsi_mpi.mpi.channel import Channel
    from dsi_mpi.mpi.clock import measure_offsets

    offsets = measure_offsets(place.comm, poller)
    channel = Channel(place.comm, poller)
    if place.local != 0:
        _serve(cfg, channel, runner, place, world.Get_rank())
    else:
        _coordinate(cfg, session, place, channel, runner, (infos, metadata, offsets), world.Get_rank())
    return 0


def _seed_and_threads(cfg: Config) -> None:
    import torch

    torch.set_num_threads(cfg.models.threads)
    torch.manual_seed(cfg.decoding.seed)


def _check_inputs(cfg: Config, world):
    """Rank 0, before any weights load: (the session, False), or (None, True) once the error is logged."""
    signal.signal(signal.SIGTERM, _terminated)  # srun's kill of a failed step: close the file first
    from dsi_mpi.app.session import Session
    from dsi_mpi.decoding.slots import check_pipeline

    try:
        session = Session.prepare(cfg)
        check_pipeline(cfg, world.Get_size())
    except ConfigError as err:
        logger.error("%s", err)
        return None, True
    return session, False


def _split_instances(cfg: Config, world, poller):
    """runtime.instances >= 2: this rank's instance and communicators (a collective: every rank)."""
    if cfg.runtime.instances == 1:
        return None
    from dsi_mpi.mpi.instances import split

    r = cfg.runtime
    placement = split(world, poller, r.instances, r.pipeline_stages, r.pipeline_groups)
    log.setup(rank=world.Get_rank(), instance=placement.instance)
    return placement


def _place(cfg: Config, world, placement, poller) -> Place:
    """This rank's Place. With one instance the pipeline groups are placed on nodes here (a collective:
    every rank); with several, the instance placement has laid them out."""
    comm = world if placement is None else placement.comm  # None on the scheduler
    local = comm.Get_rank() if comm is not None else -1
    if cfg.runtime.pipeline_stages <= 1 or comm is None:
        return Place(comm, local, None, (), None, placement)
    if placement is not None:
        layout = placement.layout
    else:
        from dsi_mpi.decoding.slots import plan_layout, spans_nodes
        from dsi_mpi.mpi import startup

        nodes = startup.node_ids(comm, poller)
        layout = plan_layout(nodes, cfg.runtime.pipeline_stages, cfg.runtime.pipeline_groups)
        if local == 0 and spans_nodes(layout, nodes):
            logger.warning(f"pipeline groups {spans_nodes(layout, nodes)} span nodes: no node had room for all stages")
    group = next((g for g in layout if local in g), ())
    return Place(comm, local, layout, group, (group.index(local), len(group)) if len(group) > 1 else None, placement)


def _start_ranks(cfg: Config, world, place: Place, poller, session):
    """Collectives over the world: the poller's spin for this node, the model on every rank but the
    scheduler, and every rank's report gathered on rank 0 (None elsewhere). Returns (runner, reports)."""
    from dsi_mpi.backends.loading import build_runner
    from dsi_mpi.mpi import startup
    from dsi_mpi.mpi.polling import spin_for_node

    place.node_rank = startup.local_rank(world)
    threads_on_node, cores_on_node = startup.node_cores(world, poller, cfg.models.threads)
    place.core_each = threads_on_node <= cores_on_node
    if place.comm is not None:  # the scheduler rank holds no core: it keeps the short spin
        poller.spin_s = spin_for_node(cfg.runtime.poll_spin_s, threads_on_node, cores_on_node)
    longest = max(map(len, session.prompt_tokens.values()), default=1) if world.Get_rank() == 0 else 0
    longest = startup.share_int(world, poller, longest, "the prompt lengths from rank 0")  # sizes static caches
    runner = None
    if place.comm is not None:
        role = "drafter" if place.local == 0 else "target"
        runner = build_runner(role, cfg, place.node_rank, longest, place.stage)
    role = place.role(getattr(runner, "layers", None) if place.stage else None)
    report = rank_report(cfg, runner, poller.spin_s, threads_on_node, cores_on_node, place.placement)
    infos = startup.gather_rank_info(world, poller, role, **report)
    startup.barrier(world, poller, "every rank to load its model")
    return runner, infos


def _serve(cfg: Config, channel, runner, place: Place, world_rank: int) -> None:
    """A verifier rank, or a stage of a pipelined group, until rank 0 says stop."""
    from dsi_mpi.decoding.acceptance import rule_from_config

    rule = rule_from_config(cfg.decoding)
    if place.stage:
        from dsi_mpi.decoding.pipeline import Stage

        Stage(channel, runner, place.group, place.stage[0], rule, fault_rank=world_rank).serve()
        return
    from dsi_mpi.decoding.verifier import Verifier

    hf_assisted = "hf_assisted" in cfg.decoding.algorithms
    assistant = (
        _lazy_assistant(cfg, place.node_rank, runner.compile_info.get("dtype", cfg.models.dtype))
        if hf_assisted
        else None
    )
    keep_warm = cfg.runtime.keep_warm  # "auto": not where ranks share cores (the forwards would take them)
    warm = place.core_each and getattr(runner, "fits_cache", False) if keep_warm == "auto" else bool(keep_warm)
    Verifier(channel, runner, assistant, rule, fault_rank=world_rank, warm=warm).serve()


def _coordinate(cfg: Config, session, place: Place, channel, drafter, started: tuple, world_rank: int) -> None:
    """An instance's rank 0: every algorithm on every prompt its feed hands out, then stop the verifiers.
    started: (every rank's report, the job's metadata, the clock offsets of this instance's ranks)."""
    infos, metadata, offsets = started
    from dsi_mpi.app.session import Session
    from dsi_mpi.decoding.verifier import stop_verifiers

    feed = _feed(cfg, session, place, infos, metadata, offsets, channel.poller)
    if place.placement is not None:  # the scheduler holds the prompts: they come with the set-up
        setup = feed.setup()
        prompts = [p for p, _ in setup["prompts"]]
        session = Session(cfg, prompts, {p.index: t for p, t in setup["prompts"]}, setup["eos_ids"], None)
    try:
        session.run(channel, drafter, feed, offsets, fault_rank=world_rank, layout=place.layout)
    finally:
        stop_verifiers(channel)


def _terminated(signum, frame):
    """SIGTERM on the writing rank (srun ends a step whose rank died with SIGTERM, then SIGKILL): leave by an
    exception, so the results file is closed whole (Python runs this between two HDF5 calls, never inside)."""
    raise SystemExit(f"terminated by signal {signum}")


def _feed(cfg: Config, session, place: Place, infos, metadata: dict, offsets, poller):
    """Where the coordinator's prompts come from and its records go (dsi_mpi/app/feeds.py)."""
    from dsi_mpi.app import feeds

    if place.placement is not None:
        feed = feeds.RemoteFeed(place.placement.queue, poller, cfg.runtime.timeout_s)
        feed.add_metadata({"clock_offsets_us": offsets})
        return feed
    from dsi_mpi.app.scheduler import describe_entry, layout_entry

    ranks, hosts = [i["rank"] for i in infos], [i["host"] for i in infos]
    feed = feeds.LocalFeed(session, ranks, hosts)
    entry = layout_entry(0, ranks, place.layout, dict(zip(ranks, hosts)))
    if entry["groups"]:
        logger.info(describe_entry(entry, infos))
    scheduler = {"policy": feeds.LOCAL_POLICY, "instances": 1, "writer_rank": 0, "layout": [entry]}
    feed.add_metadata(metadata | {"clock_offsets_us": offsets, "scheduler": scheduler})
    return feed


def _lazy_assistant(cfg: Config, node_rank: int, dtype: str):
    """hf_assisted needs the drafter next to the target; load it on first use only (its runner: the model, and
    for a drafter of another vocabulary the two tokenizers Hugging Face's generate then takes). Hugging Face's
    generate runs eager, in `dtype`, the dtype the target runs (models.dtype = "auto" resolves per backend)."""
    cache = {}

    def factory():
        if "runner" not in cache:
            from dsi_mpi.backends.loading import build_runner

            cache["runner"] = build_runner("drafter", cfg.replace("models", backend="eager", dtype=dtype), node_rank)
        return cache["runner"]

    return factory
