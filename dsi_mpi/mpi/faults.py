"""FAULT INJECTION for reliability tests and the soak test: inert unless DSI_MPI_FAULT is set.

    DSI_MPI_FAULT="rank=R,after=N,kind=K"   (several faults separated by ';')

Rank R fails at its N-th tick: a verifier ticks once per task it receives, rank 0 once per completed
prompt. Kinds: raise (a Python error), oom (MemoryError, as a failed allocation raises), kill (SIGKILL
to itself: no cleanup at all), hang (stops answering: only the watchdog can end the job).
"""

from __future__ import annotations

import os
import signal
import time

KINDS = ("raise", "oom", "kill", "hang")


class InjectedFault(RuntimeError):
    """The error an injected `raise` fault throws."""


def _parse(text: str, rank: int) -> list[tuple[int, str]]:
    plan = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        fields = dict(pair.split("=", 1) for pair in item.split(","))
        if fields.get("kind") not in KINDS or "rank" not in fields or "after" not in fields:
            raise ValueError(f"DSI_MPI_FAULT entry {item!r}: expected rank=R,after=N,kind={'|'.join(KINDS)}")
        if int(fields["rank"]) == rank:
            plan.append((int(fields["after"]), fields["kind"]))
    return plan


class FaultPlan:
    def __init__(self, rank: int, text: str | None = None):
        text = os.environ.get("DSI_MPI_FAULT", "") if text is None else text
        self.rank = rank
        self.plan = _parse(text, rank)
        self.ticks = 0

    def tick(self) -> None:
        if not self.plan:
            return
        self.ticks += 1
        for after, kind in self.plan:
            if self.ticks == after:
                self._fail(kind)

    def _fail(self, kind: str) -> None:
        if kind == "raise":
            raise InjectedFault(f"injected fault on rank {self.rank} at tick {self.ticks}")
        if kind == "oom":
            raise MemoryError(f"injected out-of-memory on rank {self.rank} at tick {self.ticks}")
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # hang: asleep, not spinning, until the job is aborted
            time.sleep(1)
