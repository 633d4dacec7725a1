"""The paper's non-SI thread in dsi: one verification task always decodes at the committed frontier.

Why: Timor et al. keep a thread that runs the target alone, as plain decoding would, beside the drafts'
verifications; it is what makes dsi never slower than plain decoding. Here, whenever dsi has two or more
verifiers and no block will yield the target's token at the committed position, a block of no drafts goes
out at that position (the frontier). Its token is committed as soon as it is read, and judges whatever draft
sits there (the judge's immediate pruning): the text moves at plain decoding's pace whatever the drafter
does. It has the lowest priority: it takes a verifier only when no block waits for one. Once the committed
text has moved past its position (a block's result got there first) its task is stopped by a CANCEL that
names it; blocks whose every position the thread has committed are dropped unread (superseded).

Before, dsi sent a block of no drafts only right after a rejection, and a slow drafter whose blocks queued
could leave the target idle: in the simulator at c 0.9, a 0.3, k 3 and 7 verifiers dsi took 1.475x plain
decoding's time; with the thread kept running, 1.016x at worst over 2,040 settings (analysis/sp_grid.py).
Pipelined verifier groups keep the old rule: one block of no drafts after each lost speculation (see
`NonSIThread.__init__`).
"""

from __future__ import annotations

from dsi_mpi.decoding.judging import Judge
from dsi_mpi.decoding.prompt_state import Cancellation, PromptState
from dsi_mpi.decoding.tasks import Block, Task, TaskLedger
from dsi_mpi.io.records import Event, Outcome


class NonSIThread:
    """One prompt's non-SI thread (see the module docstring); `enabled`: dsi with the thread and 2+ verifiers."""

    def __init__(self, state: PromptState, ledger: TaskLedger, judge: Judge, enabled: bool):
        self.p, self.ledger, self.judge, self.enabled = state, ledger, judge, enabled
        # Pipelined groups take one frontier block after each lost speculation only, as before the thread ran
        # on: a group's stages drop tasks one by one, and frontier tasks racing blocks through them made a
        # stage's cache and rank 0's picture of it part (tests/mpi/test_pipeline.py, sampling, 1 run in 3).
        self.continuous = all(len(ledger.slots.ranks(v)) == 1 for v in state.active)
        self.retracted = False  # the text lost its speculation since the last frontier block went out
        self.block: Block | None = None  # its block in flight
        self.trip_s: float | None = None  # its last task's time from sending to reading its reply

    def wanted(self) -> bool:
        """Whether a frontier block should go out now: none is in flight at the committed position, no block
        will tell the target's token there, and drafting is on (at k = 0 the verifiers decode anyway)."""
        p = self.p
        if not self.enabled or p.done or p.k == 0 or p.n_committed >= p.end:
            return False
        if self.block is not None and self.block.start == p.n_committed:
            return False
        if not (self.continuous or self.retracted):
            return False
        return not (p.blocks and p.blocks[0].start <= p.n_committed)

    def next_block(self) -> Block:
        self.block, self.retracted = Block(self.p.n_committed, [], frontier=True), False
        return self.block

    def retire(self) -> None:
        """Stop the task of a frontier the committed text has moved past (a CANCEL naming it)."""
        p, old = self.p, self.block
        if old is None or old.start == p.n_committed:
            return
        self.block = None
        task = self.ledger.inflight.get(old.task_id)
        if task is None or task.task_id in p.pending_cancels:
            return
        if not self.continuous:  # a pipelined group finishes it; its result comes back stale
            return
        self.ledger.cancel_task(task)
        now = p.now()
        p.event(Event.CANCEL_SENT, now, now, task.task_id, task.verifier)
        p.pending_cancels[task.task_id] = Cancellation(task.task_id, task.verifier, now)

    def take_result(self, task: Task, verdict) -> None:
        """Its token, committed (and judging the draft there) if the text is still where it was sent."""
        p, block = self.p, task.block
        if self.block is block:
            self.block = None
        self.trip_s = task.row["reply_s"] - task.row["sent_s"]
        if block.start != p.n_committed:
            task.row["outcome"] = Outcome.STALE_RESULT
            return
        block.result, task.row["outcome"] = verdict, Outcome.USED
        self.judge.apply_counted(block)
        self.drop_superseded()
        self.judge.apply_ready()

    def drop_superseded(self) -> None:
        """Blocks whose every position (drafts and bonus) is committed tell nothing more."""
        p = self.p
        while p.blocks and p.blocks[0].start + len(p.blocks[0].drafts) < p.n_committed:
            block = p.blocks.popleft()
            block.superseded = True
            if block.task_id is None:
                p.record.blocks_unsent += 1
            elif block.result is not None:
                p.rows[block.task_id]["outcome"] = Outcome.STALE_RESULT

    def reply_due_within(self, seconds: float) -> bool:
        """Whether its reply is due (sent + its last round trip) within `seconds` from now, or overdue."""
        task = self.ledger.inflight.get(self.block.task_id) if self.block is not None else None
        if task is None or self.trip_s is None:
            return False
        return 0 <= task.row["sent_s"] + self.trip_s - self.p.now() <= seconds
