"""One time axis for every rank: each rank's monotonic clock, plus its offset to rank 0's.

perf_counter is monotonic but each node's has its own origin, so at start-up rank 0 exchanges a few
ping-pongs with every rank and keeps, per rank, the offset seen in the exchange with the shortest round
trip (error at most half that round trip, a few microseconds on one node). Verifiers stamp their work
in microseconds of their own clock; rank 0 subtracts the offset to place it on its own axis.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from dsi_mpi.mpi.polling import BackoffPoller

SYNC_TAG = 1001
ROUNDS = 8


def now_us() -> int:
    return time.perf_counter_ns() // 1000


def _wait(poller: BackoffPoller, request: MPI.Request, what: str) -> None:
    poller.complete(request, what)


def measure_offsets(comm: MPI.Comm, poller: BackoffPoller) -> dict[int, int]:
    """Collective over all ranks. Rank 0 returns {rank: clock offset in us (rank's clock - rank 0's)}."""
    buf = np.zeros(1, dtype=np.int64)
    if comm.Get_rank() != 0:
        for _ in range(ROUNDS):
            _wait(poller, comm.Irecv(buf, source=0, tag=SYNC_TAG), "clock sync from rank 0")
            buf[0] = now_us()
            _wait(poller, comm.Isend(buf, dest=0, tag=SYNC_TAG), "clock sync reply")
        return {}
    offsets = {0: 0}
    for rank in range(1, comm.Get_size()):
        best_rtt = None
        for _ in range(ROUNDS):
            sent = now_us()
            _wait(poller, comm.Isend(buf, dest=rank, tag=SYNC_TAG), f"clock sync to rank {rank}")
            _wait(poller, comm.Irecv(buf, source=rank, tag=SYNC_TAG), f"clock sync reply from rank {rank}")
            back = now_us()
            if best_rtt is None or back - sent < best_rtt:
                best_rtt = back - sent
                offsets[rank] = int(buf[0]) - (sent + back) // 2
    return offsets
