"""What the coordinator knows about the prompt it is running, in one object made afresh for each prompt
(`SpeculativeDecoder.generate`): the text (committed tokens, then drafts), the blocks cut from it, the
record being written, the choice of k, and what waits for what. What outlives a prompt (the verifiers'
caches, the epoch, task numbers, adaptive speculation's estimates) belongs to the decoder and its TaskLedger.

Words (docs/glossary.md): a draft is *accepted* when it stands; where drafts stop standing the target puts
its own token, *recovered* when it replaces a rejected draft, *bonus* after a fully accepted block.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dsi_mpi.decoding.adaptive import AdaptiveLookahead
from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.decoding.tasks import Block
from dsi_mpi.io.records import RunRecord


@dataclass
class Deferred:
    """A bonus position that waits for its draft (sampling, dsi): the verdict that judges it once it exists."""

    verdict: np.ndarray
    j: int  # where in the verdict
    position: int


@dataclass
class Cancellation:
    """A task a rejection made stale, until its reply: one row of the cancellations table (CANCEL_DTYPE)."""

    task_id: int
    verifier: int
    rejected_s: float
    stopped_s: float = math.nan  # the verifier's forward's end, on rank 0's axis
    reply_s: float = math.nan
    busy_after_s: float = math.nan
    aborted: int = 0

    def row(self) -> tuple:
        return (
            self.task_id,
            self.verifier,
            self.rejected_s,
            self.stopped_s,
            self.reply_s,
            self.busy_after_s,
            self.aborted,
        )


@dataclass
class PromptState:
    """One prompt's run of si or dsi (see the module docstring)."""

    policy: str  # "si" or "dsi"
    run: RunSettings
    record: RunRecord
    seq: list[int]  # the text: prompt, committed tokens, then drafts
    active: list[int]  # the verifiers this run uses
    capacity: int  # tasks the active verifiers take at once
    max_ahead: int  # blocks allowed to await results
    eos_ids: frozenset
    adaptive: AdaptiveLookahead | None  # None: k fixed at run.lookahead
    clock: Callable[[], float]
    n_prompt: int = field(init=False)
    n_committed: int = field(init=False)
    end: int = field(init=False)  # the text's length once every new token is committed
    k: int = field(init=False)  # drafts per block now (0: blocks of no drafts)
    t0: float = field(init=False)
    blocks: deque[Block] = field(default_factory=deque)
    rows: dict[int, dict] = field(default_factory=dict)  # task id -> its row of the tasks table
    pending_cancels: dict[int, Cancellation] = field(default_factory=dict)
    done: bool = False
    drafting: tuple[int, int] | None = None  # (epoch, position) of the draft step under way
    deferred: Deferred | None = None
    no_proposal: tuple[int, int] | None = None  # (epoch, position) where the drafter had nothing to propose
    last_draft_s: float | None = None  # the last draft step's seconds
    last_round_trip_s: float | None = None  # the last verification's, sent to read
    restarted_s: float | None = None  # when drafting had to start afresh (si's result, a rejection): adaptive.py

    def __post_init__(self):
        self.n_prompt = self.n_committed = len(self.seq)
        self.end = len(self.seq) + self.run.max_new_tokens
        self.k = self.run.lookahead
        self.t0 = self.clock()

    @property
    def key(self) -> int:
        """Keys the random streams of sampling (the prompt's index)."""
        return self.run.key

    def now(self) -> float:
        """Seconds since the run's start, on rank 0's clock."""
        return self.clock() - self.t0

    def event(self, kind: int, t0: float, t1: float, task_id: int = -1, value: int = 0, rank: int = 0) -> None:
        self.record.events.append((rank, kind, t0, t1, task_id, value))

    def next_block_start(self) -> int:
        """Where the next block starts: after the last block, and never before the committed text."""
        last = self.blocks[-1] if self.blocks else None
        return max(last.start + len(last.drafts) if last else self.n_committed, self.n_committed)

    def drafter_has_nothing(self, epoch: int) -> bool:
        """True until the text changes after the drafter found nothing to propose for it."""
        return self.no_proposal == (epoch, len(self.seq))
