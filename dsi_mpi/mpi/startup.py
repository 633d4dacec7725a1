"""Job start-up collectives, done nonblocking and polled (a blocking collective spins a core).

Rank 0 checks everything that depends on user input before any rank loads weights, then tells every
rank to go on or to exit; later every rank reports its host and device so the results can say where
each role ran.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

from dsi_mpi.mpi.polling import BackoffPoller

INFO_TAG = 1000


def share_verdict(comm: MPI.Comm, poller: BackoffPoller, failed: bool) -> bool:
    """Broadcast rank 0's go/no-go; every rank returns True when the job must stop."""
    flag = np.array([int(failed)], dtype=np.int64)
    request = comm.Ibcast(flag, root=0)
    poller.complete(request, "the start-up checks on rank 0")
    return bool(flag[0])


def share_int(comm: MPI.Comm, poller: BackoffPoller, value: int, what: str) -> int:
    """Broadcast one integer from rank 0 (e.g. the longest prompt, which sizes static KV caches)."""
    buf = np.array([int(value)], dtype=np.int64)
    request = comm.Ibcast(buf, root=0)
    poller.complete(request, what)
    return int(buf[0])


def barrier(comm: MPI.Comm, poller: BackoffPoller, what: str) -> None:
    request = comm.Ibarrier()
    poller.complete(request, what)


def host_name() -> str:
    """The node's name: SLURM's inside a job (SLURMD_NODENAME; several slurmd on one machine emulate
    several nodes), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def gather_rank_info(comm: MPI.Comm, poller: BackoffPoller, role: str, device: str, **extra) -> list[dict] | None:
    """Rank 0 gets [{rank, host, role, device, pid, **extra}] for every rank; others get None."""
    mine = {"rank": comm.Get_rank(), "host": host_name(), "role": role, "device": device, "pid": os.getpid()}
    mine.update(extra)
    if comm.Get_rank() != 0:
        poller.complete(comm.isend(mine, dest=0, tag=INFO_TAG), "rank 0 to take this rank's start-up report")
        return None
    infos = [mine]
    for source in range(1, comm.Get_size()):
        request = comm.irecv(source=source, tag=INFO_TAG)
        infos.append(
            poller.wait_for(
                lambda request=request: (lambda done, value: value if done else None)(*request.test()),
                f"start-up report of rank {source}",
            )
        )
    return infos


@contextmanager
def _node(comm: MPI.Comm):
    """The node-local communicator (MPI's shared-memory split), freed afterwards."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        yield node
    finally:
        node.Free()


def local_rank(comm: MPI.Comm) -> int:
    """Rank among the processes on this node: picks the GPU when device = "cuda"."""
    with _node(comm) as node:
        return node.Get_rank()


def node_cores(comm: MPI.Comm, poller: BackoffPoller, threads: int) -> tuple[int, int]:
    """(torch threads of all ranks on this node, cores their CPU affinities cover together): whether a
    waiting rank may spin (mpi.polling.spin_for_node). The union counts cores that srun binds one per rank."""
    with _node(comm) as node:
        mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        top, width = np.array([mine[-1] + 1], dtype=np.int64), np.zeros(1, dtype=np.int64)
        request = node.Iallreduce(top, width, op=MPI.MAX)
        poller.complete(request, "the node-local CPU counts")
        mask, union = np.zeros(int(width[0]), dtype=np.uint8), np.zeros(int(width[0]), dtype=np.uint8)
        mask[mine] = 1
        request = node.Iallreduce(mask, union, op=MPI.BOR)
        poller.complete(request, "the node-local CPU affinities")
        return node.Get_size() * max(threads, 1), int(union.sum())


def node_ids(comm: MPI.Comm, poller: BackoffPoller) -> list[int]:
    """Every rank's node, named by the lowest world rank on it (the node-local communicator), on every rank:
    pipeline stages of one group are placed on one node from it."""
    with _node(comm) as node:
        leader = np.array([comm.Get_rank()], dtype=np.int64)
        low = np.zeros(1, dtype=np.int64)
        poller.complete(node.Iallreduce(leader, low, op=MPI.MIN), "the node-local ranks")
    nodes = np.zeros(comm.Get_size(), dtype=np.int64)
    request = comm.Iallgather(low, nodes)
    poller.complete(request, "every rank's node")
    return [int(n) for n in nodes]
