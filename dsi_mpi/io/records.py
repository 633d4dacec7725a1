"""What one (algorithm, prompt) run produced and why it took the time it took."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# One row per verification task the coordinator sent (prefill tasks included).
TASK_DTYPE = np.dtype([
    ("task_id", "i8"), ("verifier", "i4"), ("epoch", "i8"), ("start", "i8"), ("n_drafts", "i4"),
    ("base", "i8"), ("computed", "i8"), ("reused", "i8"), ("sent_s", "f8"), ("start_s", "f8"), ("end_s", "f8"),
    ("reply_s", "f8"), ("busy_s", "f8"), ("outcome", "i1"),
])
# start_s/end_s: the verifier's forward, on rank 0's time axis (clock offsets applied); busy_s = end - start.
OUTCOMES = {0: "pending", 1: "used", 2: "stale_result", 3: "aborted", 4: "prefill_extra"}
USED, STALE_RESULT, ABORTED, PREFILL_EXTRA = 1, 2, 3, 4

# One row per task that was in flight when a rejection made it stale.
# busy_after_s = stopped_s - rejected_s: how long the verifier went on computing stale work (its forward's
# end on rank 0's time axis); reply_s is when rank 0 read the reply (rank 0 may be mid-draft then).
CANCEL_DTYPE = np.dtype([
    ("task_id", "i8"), ("verifier", "i4"), ("rejected_s", "f8"), ("stopped_s", "f8"), ("reply_s", "f8"),
    ("busy_after_s", "f8"), ("aborted", "i1"),
])


# The per-run timeline: what each rank did and when, on rank 0's time axis (seconds from the run's start).
EVENT_DTYPE = np.dtype([("rank", "i4"), ("kind", "i1"), ("t0", "f8"), ("t1", "f8"), ("task_id", "i8"),
                        ("value", "i8")])
EVENT_KINDS = {1: "draft", 2: "draft_interrupted", 3: "verify", 4: "verify_aborted", 5: "reject", 6: "wait",
               7: "cancel_sent", 8: "task_sent", 9: "result_received", 10: "drafter_prefill"}
(DRAFT, DRAFT_INTERRUPTED, VERIFY, VERIFY_ABORTED, REJECT, WAIT, CANCEL_SENT, TASK_SENT, RESULT_RECEIVED,
 DRAFTER_PREFILL) = range(1, 11)


@dataclass
class RunRecord:
    algorithm: str
    prompt_index: int
    prompt_id: str
    lookahead: int = 0          # k used (0 for nonsi)
    verifiers: int = 1          # verifier ranks used
    tokens: list[int] = field(default_factory=list)          # generated token ids
    commit_times: list[float] = field(default_factory=list)  # seconds from start, one per token
    wall_s: float = 0.0
    ttft_s: float = 0.0
    drafted: int = 0            # draft tokens produced by the drafter
    draft_misses: int = 0       # times the drafter had nothing to propose (n-gram: no match)
    draft_s: float = 0.0        # seconds in drafter forwards after its prefill (for c = drafter / target)
    drafter_prefill_s: float = 0.0
    compared: int = 0           # draft tokens checked against the target
    accepted: int = 0           # draft tokens that matched and were committed
    rejections: int = 0
    restarts: int = 0           # verdicts that disagreed with an already committed draft (float noise): re-verified
    tasks_sent: int = 0
    tasks_used: int = 0         # results applied to the text
    tasks_stale: int = 0        # results ignored or forwards aborted because a rejection made them stale
    blocks_unsent: int = 0      # blocks dropped by a rejection before any verifier started them
    tasks: list[tuple] = field(default_factory=list)
    cancellations: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)        # EVENT_DTYPE rows

    @property
    def acceptance(self) -> float:
        return self.accepted / self.compared if self.compared else float("nan")

    def task_table(self) -> np.ndarray:
        return np.array(self.tasks, dtype=TASK_DTYPE)

    def cancel_table(self) -> np.ndarray:
        return np.array(self.cancellations, dtype=CANCEL_DTYPE)

    def event_table(self) -> np.ndarray:
        return np.array(self.events, dtype=EVENT_DTYPE)

    def scalars(self) -> dict:
        return {"lookahead": self.lookahead, "verifiers": self.verifiers, "wall_s": self.wall_s, "ttft_s": self.ttft_s, "drafted": self.drafted, "draft_misses": self.draft_misses, "draft_s": self.draft_s,
                "drafter_prefill_s": self.drafter_prefill_s, "compared": self.compared,
                "accepted": self.accepted, "rejections": self.rejections, "restarts": self.restarts, "tasks_sent": self.tasks_sent,
                "tasks_used": self.tasks_used, "tasks_stale": self.tasks_stale, "blocks_unsent": self.blocks_unsent,
                "new_tokens": len(self.tokens)}
