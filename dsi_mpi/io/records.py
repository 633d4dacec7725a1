"""What one (algorithm, prompt) run produced and why it took the time it took."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Outcome(IntEnum):
    """What became of a verification task (the tasks table's `outcome`)."""

    PENDING = 0  # no reply yet (never left in a finished record)
    USED = 1  # its result was applied to the text
    STALE_RESULT = 2  # its result came back after a rejection had made it stale, and was dropped
    ABANDONED = 3  # the verifier abandoned it on a CANCEL (replied ABORTED), mid-forward or before it
    PREFILL_EXTRA = 4  # a prefill sent only to warm another verifier's cache


# One row per verification task the coordinator sent (prefill tasks included).
# start_s/end_s: the verifier's forward, on rank 0's time axis (clock offsets applied); busy_s = end - start.
# accepted: drafts that stood when the result was applied (a full block's extra token also judges the next
# block's first draft, so up to n_drafts + 1); -1 if it was never applied.
TASK_DTYPE = np.dtype(
    [
        ("task_id", "i8"),
        ("verifier", "i4"),
        ("epoch", "i8"),
        ("start", "i8"),
        ("n_drafts", "i4"),
        ("base", "i8"),
        ("computed", "i8"),
        ("reused", "i8"),
        ("sent_s", "f8"),
        ("start_s", "f8"),
        ("end_s", "f8"),
        ("reply_s", "f8"),
        ("busy_s", "f8"),
        ("outcome", "i1"),
        ("accepted", "i4"),
    ]
)

# One row per task that was in flight when a rejection made it stale.
# busy_after_s = stopped_s - rejected_s: how long the verifier went on computing stale work (its forward's
# end on rank 0's time axis); reply_s is when rank 0 read the reply (rank 0 may be mid-draft then).
CANCEL_DTYPE = np.dtype(
    [
        ("task_id", "i8"),
        ("verifier", "i4"),
        ("rejected_s", "f8"),
        ("stopped_s", "f8"),
        ("reply_s", "f8"),
        ("busy_after_s", "f8"),
        ("aborted", "i1"),
    ]
)

# One row per stage of each task a pipelined verifier group replied to (none for plain verifiers): stage
# `stage` (0 first) ran on `rank`; status 0 computed, 1 aborted mid-forward on a CANCEL, 2 dropped unseen
# (stale on arrival, or abandoned by an earlier stage); start_s/end_s on rank 0's time axis.
STAGE_DTYPE = np.dtype(
    [
        ("task_id", "i8"),
        ("verifier", "i4"),
        ("stage", "i4"),
        ("rank", "i4"),
        ("status", "i1"),
        ("start_s", "f8"),
        ("end_s", "f8"),
    ]
)


# The per-run timeline: what each rank did and when, on rank 0's time axis (seconds from the run's start).
EVENT_DTYPE = np.dtype([("rank", "i4"), ("kind", "i1"), ("t0", "f8"), ("t1", "f8"), ("task_id", "i8"), ("value", "i8")])


class Event(IntEnum):
    """The events table's `kind`; `value` and `task_id` as noted (-1: no task)."""

    DRAFT = 1  # rank 0: one completed drafter step (value: the position drafted)
    DRAFT_INTERRUPTED = 2  # rank 0: a drafter step dropped because a result changed the text under it
    VERIFY = 3  # verifier: a verification forward that finished (value: tokens computed)
    VERIFY_ABORTED = 4  # verifier: a forward abandoned on a CANCEL
    REJECT = 5  # rank 0: a rejection (value: the position)
    WAIT = 6  # rank 0: idle, waiting for a reply
    CANCEL_SENT = 7  # rank 0: a CANCEL sent (value: the verifier)
    TASK_SENT = 8  # rank 0: a task sent (value: the verifier)
    RESULT_RECEIVED = 9  # rank 0: a reply read (value: the verifier)
    DRAFTER_PREFILL = 10  # rank 0: the drafter's prefill of the prompt (value: prompt length)
    LOOKAHEAD = 11  # rank 0: adaptive speculation changed k, the drafts per block (value: the new k; 0: none)
    DRAFT_CATCH_UP = 12  # rank 0: a completed drafter step that also fed committed tokens its cache lacked
    # (after a plain run or a bonus token; value: the position drafted; task_id: the tokens fed, > 1)
    STREAMED = 13  # rank 0: a token of the non-SI thread's stream read (value: its position)

    @property
    def label(self) -> str:
        return self.name.lower()


TABLES = ("tasks", "cancellations", "events", "stages")  # the RunRecord fields that hold table rows


@dataclass
class RunRecord:
    algorithm: str
    prompt_index: int
    prompt_id: str
    lookahead: int = 0  # k used (0 for nonsi)
    verifiers: int = 1  # verifier ranks used
    tokens: list[int] = field(default_factory=list)  # generated token ids
    commit_times: list[float] = field(default_factory=list)  # seconds from start, one per token
    wall_s: float = 0.0
    ttft_s: float = 0.0
    drafted: int = 0  # draft tokens produced by the drafter
    draft_misses: int = 0  # times the drafter had nothing to propose (n-gram: no match)
    draft_s: float = 0.0  # seconds in drafter forwards after its prefill (for c = drafter / target)
    drafter_prefill_s: float = 0.0
    compared: int = 0  # draft tokens checked against the target
    accepted: int = 0  # draft tokens that matched and were committed
    rejections: int = 0
    restarts: int = 0  # verdicts that disagreed with an already committed draft (float noise): re-verified
    tasks_sent: int = 0
    tasks_used: int = 0  # results applied to the text
    tasks_stale: int = 0  # results ignored or forwards aborted because a rejection made them stale
    blocks_unsent: int = 0  # blocks dropped by a rejection before any verifier started them
    tasks: list[tuple] = field(default_factory=list)
    cancellations: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)  # EVENT_DTYPE rows
    stages: list[tuple] = field(default_factory=list)  # STAGE_DTYPE rows (pipelined verifiers only)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.compared if self.compared else float("nan")

    def task_table(self) -> np.ndarray:
        return np.array(self.tasks, dtype=TASK_DTYPE)

    def cancel_table(self) -> np.ndarray:
        return np.array(self.cancellations, dtype=CANCEL_DTYPE)

    def event_table(self) -> np.ndarray:
        return np.array(self.events, dtype=EVENT_DTYPE)

    def stage_table(self) -> np.ndarray:
        return np.array(self.stages, dtype=STAGE_DTYPE)

    def to_message(self) -> dict:
        """Every field as plain values, for the scheduler's JSON messages (`from_message` reverses it exactly:
        JSON keeps every float as it was, NaN included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_message(cls, values: dict) -> RunRecord:
        return cls(**{k: [tuple(row) for row in v] if k in TABLES else v for k, v in values.items()})

    def as_dict(self) -> dict:
        """The shape `read_results` gives a record: scalars, token lists and the four tables as arrays."""
        return {
            "algorithm": self.algorithm,
            "prompt_index": self.prompt_index,
            "prompt_id": self.prompt_id,
            "tokens": list(self.tokens),
            "commit_times": list(self.commit_times),
            "tasks": self.task_table(),
            "cancellations": self.cancel_table(),
            "events": self.event_table(),
            "stages": self.stage_table(),
        } | self.scalars()

    def scalars(self) -> dict:
        return {
            "lookahead": self.lookahead,
            "verifiers": self.verifiers,
            "wall_s": self.wall_s,
            "ttft_s": self.ttft_s,
            "drafted": self.drafted,
            "draft_misses": self.draft_misses,
            "draft_s": self.draft_s,
            "drafter_prefill_s": self.drafter_prefill_s,
            "compared": self.compared,
            "accepted": self.accepted,
            "rejections": self.rejections,
            "restarts": self.restarts,
            "tasks_sent": self.tasks_sent,
            "tasks_used": self.tasks_used,
            "tasks_stale": self.tasks_stale,
            "blocks_unsent": self.blocks_unsent,
            "new_tokens": len(self.tokens),
        }
