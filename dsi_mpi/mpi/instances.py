"""Split one job into G independent DSI instances (runtime.instances = G >= 2), node-local where they fit.

World rank 0 is the scheduler and writer (dsi_mpi/app/scheduler.py); ranks 1..N-1 form G instances of
S = (N-1)/G ranks each: a drafter (the instance's rank 0, its coordinator) and S - 1 verifier ranks. With
runtime.pipeline_stages = P > 1, m of them are pipelined groups of P ranks (runtime.pipeline_groups per
instance, 0: every verifier rank), the instance's ranks 1..mP in order; the rest hold the whole target.
Every rank computes the same placement from the same gathered facts (each rank's node, from the
node-local communicator, MPI.COMM_TYPE_SHARED):
  1. whole instances inside one node, node by node, for as long as every pipeline group still to place
     keeps a node with room for it (activations between stages are the heavy traffic: a group spans
     nodes only where no node has P ranks left);
  2. the rest: first every remaining group on one node (first fit, next to the instance's previous group),
     then each instance's drafter and plain verifiers, on its groups' node while ranks are left there, else
     the lowest ranks left (without pipelines: the leftover ranks pooled in rank order).
Instances that span nodes, and groups that do, are named at start-up. Three communicators come out of it:
  * `comm`: the instance's own (its rank 0 is the drafter and coordinator): the only one its ranks decode
    over, ranked in the order above, so its pipeline layout is the same in every instance (`layout`);
  * `queue`: the scheduler (rank 0 there) and the G coordinators (instance i's at rank i + 1): prompts and records;
  * `faults`: a duplicate of the world, on which a failing rank tells the scheduler before the job aborts.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpi4py import MPI

from dsi_mpi.io.config import ConfigError
from dsi_mpi.mpi.polling import BackoffPoller
from dsi_mpi.mpi.startup import node_ids


@dataclass
class Placement:
    instance: int  # this rank's instance, -1 on the scheduler
    instances: list[list[int]]  # world ranks of each instance: drafter, its groups' stages, plain verifiers
    layout: list[tuple[int, ...]]  # an instance's verifiers in its own ranks (the same in every instance)
    comm: MPI.Comm | None  # the instance's communicator (None on the scheduler)
    queue: MPI.Comm | None  # scheduler + coordinators (None on verifiers)
    faults: MPI.Comm  # the world, duplicated: failure notices to the scheduler
    spanning: list[int]  # instances whose ranks are on more than one node
    split_groups: list[list[int]]  # pipeline groups (world ranks) whose stages are on more than one node

    @property
    def members(self) -> list[int]:
        return self.instances[self.instance] if self.instance >= 0 else [0]

    def describe(self, world_rank: int) -> str:
        """Where a message comes from, for error lines: the instance and which world rank is which."""
        if self.instance < 0:
            return "the scheduler (world rank 0)"
        ranks = ", ".join(f"{i}={r}" for i, r in enumerate(self.members))
        local = self.members.index(world_rank)
        return f"instance {self.instance}, its rank {local} (instance ranks to world ranks: {ranks})"


def check_size(size: int, instances: int, stages: int = 1, groups: int = 0) -> int:
    """Ranks per instance S for N = size ranks, G instances and pipeline groups of P stages (m per instance,
    0: all); ConfigError naming the numbers unless N = 1 + G*S, S >= 2 and the groups fit each instance."""
    workers = size - 1
    if workers % instances or workers // instances < 2:
        raise ConfigError(
            f"runtime.instances = {instances} needs 1 + {instances} x S ranks (one scheduler rank, then "
            f"{instances} instances of S >= 2 ranks: a drafter and its verifiers), got {size}"
        )
    per = workers // instances
    groups_per_instance(size, instances, stages, groups)
    return per


def groups_per_instance(size: int, instances: int, stages: int, groups: int) -> int:
    """m, an instance's pipelined groups (0 without pipelines); ConfigError when they do not fit its ranks."""
    if stages <= 1:
        return 0
    per = (size - 1) // instances
    verifiers = per - 1
    what = (
        f"runtime.instances = {instances} with runtime.pipeline_stages = {stages}: {size} ranks make 1 scheduler + "
        f"{instances} instances of {per} ranks (a drafter and {verifiers} verifier rank{'s' * (verifiers != 1)})"
    )
    if groups == 0 and verifiers % stages:
        raise ConfigError(
            f"{what}, which do not divide into groups of {stages} stages: launch 1 + {instances} x (1 + a multiple "
            f"of {stages}) ranks (e.g. {1 + instances * (1 + stages)}), or set runtime.pipeline_groups"
        )
    if groups * stages > verifiers:
        raise ConfigError(
            f"{what}, but runtime.pipeline_groups = {groups} groups of {stages} stages per instance need "
            f"{groups * stages}: launch at least 1 + {instances} x {1 + groups * stages} = "
            f"{1 + instances * (1 + groups * stages)} ranks"
        )
    return groups or verifiers // stages


def instance_layout(size: int, stages: int, groups: int) -> list[tuple[int, ...]]:
    """An instance's verifiers in its own ranks: `groups` groups of `stages` ranks (1.. in order), then plain ranks."""
    cut = [tuple(range(1 + i * stages, 1 + (i + 1) * stages)) for i in range(groups)]
    return cut + [(r,) for r in range(1 + groups * stages, size)]


def assign(
    nodes: list[int], instances: int, stages: int = 1, groups: int = 0
) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """Cut ranks 1..N-1 into instances (`nodes[r]` names rank r's node), by the two steps in the module's
    docstring. Returns (each instance's world ranks: drafter, its groups' stages, plain verifiers; ordered by
    drafter), the indices of instances that span nodes, and the groups that span nodes."""
    size = check_size(len(nodes), instances, stages, groups)
    m = groups_per_instance(len(nodes), instances, stages, groups)
    free: dict[int, list[int]] = {}
    for rank in range(1, len(nodes)):
        free.setdefault(nodes[rank], []).append(rank)
    whole = _whole_instances(free, instances, size, stages, m)
    members = sorted(whole + _pooled_instances(free, instances - len(whole), size, stages, m), key=lambda r: r[0])

    def spans(ranks: list[int]) -> bool:
        return len({nodes[r] for r in ranks}) > 1

    cut = [ranks[1 + i * stages : 1 + (i + 1) * stages] for ranks in members for i in range(m)]
    return members, [i for i, ranks in enumerate(members) if spans(ranks)], [g for g in cut if spans(g)]


def _whole_instances(free: dict[int, list[int]], count: int, size: int, stages: int, m: int) -> list[list[int]]:
    """Step 1: whole instances inside one node (taken off `free`), while every group still to place keeps a
    node with room."""
    whole, need = [], count * m
    room = sum(len(ranks) // stages for ranks in free.values())
    for ranks in free.values():
        while len(whole) < count and len(ranks) >= size:
            after = room - len(ranks) // stages + (len(ranks) - size) // stages
            if m and after < need - m:
                break
            whole.append(ranks[:size])
            del ranks[:size]
            room, need = after, need - m
    return whole


def _pooled_instances(free: dict[int, list[int]], count: int, size: int, stages: int, m: int) -> list[list[int]]:
    """Step 2: every remaining group on one node with room, then drafters and plain verifiers next to them."""
    placed = []
    for _ in range(count):
        home, cut = None, []
        for _ in range(m):
            fits = [n for n, ranks in free.items() if len(ranks) >= stages]
            node = home if home in fits else fits[0] if fits else None
            take = free[node][:stages] if node is not None else sorted(r for rs in free.values() for r in rs)[:stages]
            home = node if home is None else home
            _take(free, take)
            cut += take
        placed.append((home, cut))
    members = []
    for home, cut in placed:
        rest = free.get(home, [])[: size - len(cut)]
        rest += sorted(r for rs in free.values() for r in rs if r not in rest)[: size - len(cut) - len(rest)]
        _take(free, rest)
        members.append(rest[:1] + cut + sorted(rest[1:]))
    return members


def _take(free: dict[int, list[int]], ranks: list[int]) -> None:
    for node in free:
        free[node] = [r for r in free[node] if r not in ranks]


def split(world: MPI.Comm, poller: BackoffPoller, instances: int, stages: int = 1, groups: int = 0) -> Placement:
    """Collective over the world: every rank gets its instance and communicators. The gather of every rank's
    node returns only once every rank has arrived, so the blocking splits that follow do not wait on a
    missing rank."""
    rank = world.Get_rank()
    members, spanning, split_groups = assign(node_ids(world, poller), instances, stages, groups)
    instance = next((i for i, ranks in enumerate(members) if rank in ranks), -1)
    key = members[instance].index(rank) if instance >= 0 else 0  # the drafter is its instance's rank 0
    comm = world.Split(instance if instance >= 0 else MPI.UNDEFINED, key=key)
    in_queue = rank == 0 or (instance >= 0 and members[instance][0] == rank)
    queue = world.Split(0 if in_queue else MPI.UNDEFINED, key=rank)  # instance g's coordinator is rank g + 1
    faults = world.Dup()
    null = MPI.COMM_NULL
    size = len(members[0])
    layout = instance_layout(size, stages, groups_per_instance(world.Get_size(), instances, stages, groups))
    return Placement(
        instance,
        members,
        layout,
        None if comm == null else comm,
        None if queue == null else queue,
        faults,
        spanning,
        split_groups,
    )
