"""Rank-aware logging for every command: each line names the rank and the host.

    dsi-mpi: rank 0 (node1): planner: lookahead si 4, dsi 5, ...
    dsi-mpi: warning on rank 0 (node1): 1 verifier rank(s) will stay idle: ...
    dsi-mpi: error on rank 2 (node3): RuntimeError: injected fault

Rank 0 logs at INFO, every other rank at WARNING (so N ranks do not repeat one message N times); each `-v`
makes every rank one level more verbose, each `-q` one level quieter. The rank comes from the launcher's
environment before MPI is initialised (mpiexec: PMI_RANK, OMPI_COMM_WORLD_RANK; srun: PMIX_RANK,
SLURM_PROCID), and from MPI once it runs (`setup(rank=...)`). The summary table and the progress line are
not log lines: they go to stdout and the terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

NAME = "dsi_mpi"
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
_state = {"verbosity": 0}


def launcher_rank() -> int:
    """This process's rank as the launcher (mpiexec or srun) set it; 0 when not launched by one."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


class _RankFormatter(logging.Formatter):
    def __init__(self, rank: int, host: str, instance: int | None = None):
        super().__init__()
        self.rank, self.host = rank, host
        self.place = "" if instance is None else ", scheduler" if instance < 0 else f", instance {instance}"

    def format(self, record: logging.LogRecord) -> str:
        where = f"rank {self.rank} ({self.host}{self.place})"
        if record.levelno >= logging.ERROR:
            head = f"error on {where}"
        elif record.levelno >= logging.WARNING:
            head = f"warning on {where}"
        else:
            head = where
        text = f"dsi-mpi: {head}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(verbosity: int | None = None, rank: int | None = None, instance: int | None = None) -> logging.Logger:
    """(Re)configure the package's logger; `verbosity` is the count of -v minus the count of -q; `instance`
    (runtime.instances >= 2): this rank's instance, -1 for the scheduler, named on every line."""
    if verbosity is not None:
        _state["verbosity"] = verbosity
    rank = launcher_rank() if rank is None else rank
    base = logging.INFO if rank == 0 else logging.WARNING
    level = min(max(base - 10 * _state["verbosity"], logging.DEBUG), logging.CRITICAL)
    logger = logging.getLogger(NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RankFormatter(rank, socket.gethostname().split(".")[0], instance))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


ABORT_GRACE_S = 1.0


def drain_before_abort() -> None:
    """Flush stderr, then wait a moment: MPI Abort tears down the launcher's stdio forwarding (MPICH
    hydra, srun) at once, and a line still in a pipe is lost, so the error naming the rank would go
    unseen (measured: 1 in 8 aborts lost MPICH's own Abort line, and a CI run lost everything)."""
    for handler in logging.getLogger(NAME).handlers:
        handler.flush()
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)


def get(name: str = "") -> logging.Logger:
    """The package's logger (or a child of it: `get("session")`)."""
    return logging.getLogger(f"{NAME}.{name}" if name else NAME)
