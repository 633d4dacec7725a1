"""What the coordinator tracks per block of drafts and per verification task, the row each task leaves in
the results file's tasks table (dsi_mpi/io/records.py TASK_DTYPE), and the ledger of tasks sent: their
numbers, their one reply each, the CANCELs that drop stale ones (all of an older epoch, or one by its
id), and the epoch (`TaskLedger`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dsi_mpi.decoding.slots import VerifierSlots
from dsi_mpi.io.records import Outcome
from dsi_mpi.mpi import protocol

if TYPE_CHECKING:  # the simulator runs the coordinator without MPI (dsi_mpi/timemodel/virtual.py)
    from dsi_mpi.mpi.channel import Channel


@dataclass
class Block:
    start: int  # sequence position of the first draft
    drafts: list[int]  # the drafts (empty for the prefill block)
    task_id: int | None = None  # set once sent
    result: np.ndarray | None = None  # target tokens for positions start .. start + len(drafts)
    plain: int = 0  # > 0: no drafts, the verifier decodes this many tokens itself (adaptive k = 0)
    frontier: bool = False  # the non-SI thread's block (decoding/nonsi_thread.py)
    stream: bool = False  # a frontier run whose tokens come back one by one as they are decoded (STREAMED)
    superseded: bool = False  # every position committed by the non-SI thread before its result was read


@dataclass
class Task:
    task_id: int
    verifier: int
    epoch: int
    sequence: list[int]  # the full token sequence the verifier's cache holds when it is done
    block: Block | None  # None for the extra prefills that only warm other verifiers' caches
    row: dict = field(default_factory=dict)
    cancelled: bool = False  # told to stop by its id (a CANCEL naming it), though of the current epoch


def task_row(task: Task, start: int, n_drafts: int, base: int, sent_s: float) -> dict:
    """The task's row as sent; the reply fills in its times, tokens computed and reused, outcome and
    accepted drafts (a task that only warms another verifier's cache is a PREFILL_EXTRA throughout)."""
    return {
        "task_id": task.task_id,
        "verifier": task.verifier,
        "epoch": task.epoch,
        "start": start,
        "n_drafts": n_drafts,
        "base": base,
        "computed": 0,
        "reused": 0,
        "sent_s": sent_s,
        "start_s": np.nan,
        "end_s": np.nan,
        "reply_s": np.nan,
        "busy_s": np.nan,
        "outcome": Outcome.PENDING if task.block is not None else Outcome.PREFILL_EXTRA,
        "accepted": -1,
    }


def split_stage_records(payload: np.ndarray, n_stages: int) -> tuple[np.ndarray, list[list[int]]]:
    """A reply's verdict, and the (rank, status, start_us, end_us) a pipelined group's last stage appends
    per stage (none from a plain verifier)."""
    n = protocol.STAGE_RECORD * n_stages
    if not n:
        return payload, []
    return payload[: len(payload) - n], payload[len(payload) - n :].reshape(-1, 4).tolist()


class TaskLedger:
    """Rank 0's verification tasks and the verifiers they go to, kept from prompt to prompt (the verifiers'
    caches outlive a prompt): a task number for each task, sent to its verifier's first rank and held in
    flight until its one reply (RESULT or ABORTED) comes from the last, checked against what was sent; a
    CANCEL to every rank of a verifier that holds stale tasks. The epoch rises whenever the text loses
    speculation (a rejection, a restart, a prompt's end): a task of an older epoch is stale."""

    def __init__(self, channel: Channel, layout, offsets_us: dict[int, int] | None = None):
        self.channel = channel
        self.slots = VerifierSlots(layout)  # plain ranks, or tuples of stage ranks (pipelined groups)
        self.offsets_us = offsets_us or {}  # verifier clock - rank 0 clock (dsi_mpi.mpi.clock)
        self.inflight: dict[int, Task] = {}  # task id -> task awaiting its one reply
        self.epoch = 0
        self.next_task_id = 0

    @property
    def verifiers(self) -> list[int]:
        return self.slots.ids

    def new_task_id(self) -> int:
        self.next_task_id += 1
        return self.next_task_id - 1

    def send(self, verifier: int, block: Block | None, sequence: list[int], base: int, key: int, extras) -> Task:
        """Send a task of the current epoch: the tokens of `sequence` after `base`, then the rule's extras."""
        task = Task(self.new_task_id(), verifier, self.epoch, sequence, block)
        self.channel.send(
            self.slots.ranks(verifier)[0],
            protocol.TASK,
            sequence[base:] + extras,
            task_id=task.task_id,
            epoch=self.epoch,
            base=base,
            n_out=(len(block.drafts) if block else 0) + 1,
            key=key,
            n_extras=len(extras),
            plain=block.plain if block else 0,
            stream=int(block.stream) if block else 0,
        )
        self.inflight[task.task_id] = task
        self.slots.sent(task, base)
        return task

    def take_reply(self):
        """One waiting reply as (task, source, message), or None; a reply that is not one a task in flight
        awaits, from the rank it awaits it from, is a ProtocolError. A STREAMED token leaves its task in
        flight (its one reply comes later) and extends what the verifier's cache will hold."""
        got = self.channel.poll()
        if got is None:
            return None
        source, msg = got
        if msg.kind not in (protocol.RESULT, protocol.ABORTED, protocol.STREAMED):
            raise protocol.ProtocolError(f"rank {source} sent an unexpected {protocol.KIND_NAMES[msg.kind]}")
        task = self.inflight.get(msg.task_id)
        if task is None or task.epoch != msg.epoch:
            raise protocol.ProtocolError(f"rank {source} replied for unknown task {msg.task_id} (epoch {msg.epoch})")
        stream = task.block is not None and task.block.stream
        if msg.kind == protocol.STREAMED:
            if not stream or source != self.slots.ranks(task.verifier)[-1]:
                raise protocol.ProtocolError(f"rank {source} streamed a token for task {msg.task_id}, not its stream")
            task.sequence.append(int(msg.payload[0]))
            return task, source, msg
        plain = task.block.plain if task.block is not None else 0
        if plain and not stream and msg.kind == protocol.RESULT:  # a plain run fed back all its tokens but the
            task.sequence = task.sequence + [int(t) for t in msg.payload[: plain - 1]]  # last: cached too
        problem = self.slots.replied(task, source, msg)
        if problem:
            raise protocol.ProtocolError(problem)
        del self.inflight[msg.task_id]
        return task, source, msg

    def verifier_time(self, rank: int, us: int, t0: float) -> float:
        """A verifier's timestamp on rank 0's time axis, in seconds from `t0` (the run's start)."""
        return (us - self.offsets_us.get(rank, 0)) * 1e-6 - t0

    def cancel(self, tasks: list[Task]) -> None:
        """Tell the verifiers of `tasks` to drop everything older than the epoch: one CANCEL per verifier, to
        each of its ranks."""
        told: set[int] = set()
        for task in tasks:
            if task.verifier not in told:
                told.add(task.verifier)
                for rank in self.slots.ranks(task.verifier):
                    self.channel.send(rank, protocol.CANCEL, epoch=self.epoch)

    def cancel_task(self, task: Task) -> None:
        """Tell the verifier of one task of the current epoch to drop it: a CANCEL naming it, to each rank."""
        task.cancelled = True
        for rank in self.slots.ranks(task.verifier):
            self.channel.send(rank, protocol.CANCEL, [task.task_id], epoch=self.epoch)

    def waiting_for(self) -> str:
        ranks = self.slots.busy_ranks()
        return f"verification results from rank(s) {ranks}" if ranks else ""
