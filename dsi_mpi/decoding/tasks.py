"""What the coordinator tracks per block of drafts and per verification task, and the row each task leaves
in the results file's tasks table (dsi_mpi/io/records.py TASK_DTYPE)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsi_mpi.io.records import Outcome
from dsi_mpi.mpi import protocol


@dataclass
class Block:
    start: int  # sequence position of the first draft
    drafts: list[int]  # the drafts (empty for the prefill block)
    task_id: int | None = None  # set once sent
    result: np.ndarray | None = None  # target tokens for positions start .. start + len(drafts)
    plain: int = 0  # > 0: no drafts, the verifier decodes this many tokens itself (adaptive k = 0)


@dataclass
class Task:
    task_id: int
    verifier: int
    epoch: int
    sequence: list[int]  # the full token sequence the verifier's cache holds when it is done
    block: Block | None  # None for the extra prefills that only warm other verifiers' caches
    row: dict = field(default_factory=dict)


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
