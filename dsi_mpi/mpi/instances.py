"""Split one job into G independent DSI instances (runtime.instances = G >= 2), node-local where they fit.

World rank 0 is the scheduler and writer (dsi_mpi/batch.py); ranks 1..N-1 form G instances of
S = (N-1)/G ranks each. The node of every rank comes from the node-local communicator
(MPI.COMM_TYPE_SHARED), so an instance's verification traffic stays inside a node: each node's ranks are
cut into whole instances first, and only the ranks left over on nodes whose count is not a multiple of S
are pooled into instances that span nodes (a warning says which). Every rank computes the same layout
from the same gathered facts. Three communicators come out of it:
  * `comm`: the instance's own (its rank 0 is the coordinator): the only one its ranks decode over;
  * `queue`: the scheduler (rank 0 there) and the G coordinators (rank g + 1): prompts and records;
  * `faults`: a duplicate of the world, on which a failing rank tells the scheduler before the job aborts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from dsi_mpi.io.config import ConfigError
from dsi_mpi.mpi.polling import BackoffPoller


@dataclass
class Placement:
    instance: int  # this rank's instance, -1 on the scheduler
    groups: list[list[int]]  # world ranks of each instance, its coordinator first
    comm: MPI.Comm | None  # the instance's communicator (None on the scheduler)
    queue: MPI.Comm | None  # scheduler + coordinators (None on verifiers)
    faults: MPI.Comm  # the world, duplicated: failure notices to the scheduler
    spanning: list[int]  # instances whose ranks are on more than one node

    @property
    def members(self) -> list[int]:
        return self.groups[self.instance] if self.instance >= 0 else [0]

    def describe(self, world_rank: int) -> str:
        """Where a message comes from, for error lines: the instance and which world rank is which."""
        if self.instance < 0:
            return "the scheduler (world rank 0)"
        ranks = ", ".join(f"{i}={r}" for i, r in enumerate(self.members))
        local = self.members.index(world_rank)
        return f"instance {self.instance}, its rank {local} (instance ranks to world ranks: {ranks})"


def check_size(size: int, instances: int) -> int:
    """Ranks per instance S for N = size ranks and G instances; ConfigError unless N = 1 + G*S, S >= 2."""
    workers = size - 1
    if workers % instances or workers // instances < 2:
        raise ConfigError(
            f"runtime.instances = {instances} needs 1 + {instances} x S ranks (one scheduler rank, then "
            f"{instances} instances of S >= 2 ranks: a drafter and its verifiers), got {size}"
        )
    return workers // instances


def assign(nodes: list[int], instances: int) -> tuple[list[list[int]], list[int]]:
    """Cut ranks 1..N-1 into `instances` groups: whole groups within a node first, then the leftovers in rank
    order. `nodes[r]` names rank r's node. Returns (groups ordered by first rank, indices of spanning groups)."""
    size = check_size(len(nodes), instances)
    per_node: dict[int, list[int]] = {}
    for rank in range(1, len(nodes)):
        per_node.setdefault(nodes[rank], []).append(rank)
    groups, leftovers = [], []
    for ranks in per_node.values():
        whole = len(ranks) - len(ranks) % size
        groups += [ranks[i : i + size] for i in range(0, whole, size)]
        leftovers += ranks[whole:]
    leftovers.sort()
    groups += [leftovers[i : i + size] for i in range(0, len(leftovers), size)]
    groups.sort(key=lambda g: g[0])
    spanning = [i for i, g in enumerate(groups) if len({nodes[r] for r in g}) > 1]
    return groups, spanning


def _node_of_every_rank(world: MPI.Comm, poller: BackoffPoller) -> list[int]:
    """Each rank's node, named by the lowest world rank on it (a collective: every rank, once)."""
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    try:
        leader = node.Get_group().Translate_ranks([0], world.Get_group())[0]
    finally:
        node.Free()
    mine = np.array([leader], dtype=np.int64)
    every = np.zeros(world.Get_size(), dtype=np.int64)
    request = world.Iallgather(mine, every)
    poller.complete(request, "every rank's node (instance placement)")
    return [int(n) for n in every]


def split(world: MPI.Comm, poller: BackoffPoller, instances: int) -> Placement:
    """Collective over the world: every rank gets its instance and communicators. The gather above returns
    only once every rank has arrived, so the blocking splits that follow do not wait on a missing rank."""
    rank = world.Get_rank()
    groups, spanning = assign(_node_of_every_rank(world, poller), instances)
    instance = next((i for i, g in enumerate(groups) if rank in g), -1)
    comm = world.Split(instance if instance >= 0 else MPI.UNDEFINED, key=rank)
    in_queue = rank == 0 or (instance >= 0 and groups[instance][0] == rank)
    queue = world.Split(0 if in_queue else MPI.UNDEFINED, key=rank)
    faults = world.Dup()
    null = MPI.COMM_NULL
    return Placement(
        instance, groups, None if comm == null else comm, None if queue == null else queue, faults, spanning
    )
