"""The paper's non-SI thread in dsi: the target always decoding at the committed frontier.

Why: Timor et al. keep a thread that runs the target alone, as plain decoding would, beside the drafts'
verifications; it is what makes dsi never slower than plain decoding. Here, whenever dsi has two or more
verifiers and no block will yield the target's token at the committed position, a frontier task goes out at
that position. Its tokens are committed as soon as they are read, each judging whatever draft sits there (the
judge's immediate pruning): the text moves at plain decoding's pace whatever the drafter does. It has the
lowest priority: it takes a verifier only when no block waits for one. Once the committed text has moved past
it (a block's result got there first) its task is stopped by a CANCEL that names it; blocks whose every
position the thread has committed are dropped unread (superseded).

Greedy, on plain verifier ranks, the frontier task is a stream: a run the verifier decodes token after token,
sending each as it goes (protocol STREAMED), so that the target never waits for rank 0 between two of its
tokens. A rejection does not stop it (it decodes the committed text, which a rejection does not change). Under
sampling the token at a drafted position is the acceptance rule's, which only rank 0 knows, so the frontier
is a block of no drafts, one token at a time (a round trip each: measured at c 0.9, a 0.3, k 3, 7 verifiers,
emulated MPI, 1.03-1.04x plain decoding's time, most of it the verifier's wake-up and rank 0's read).
Pipelined verifier groups take one such block after each lost speculation only (see `NonSIThread.__init__`).

Before, dsi sent a block of no drafts only right after a rejection, and a slow drafter whose blocks queued
could leave the target idle: in the simulator at c 0.9, a 0.3, k 3 and 7 verifiers dsi took 1.475x plain
decoding's time; with the thread kept running, 1.015x at worst over 2,040 settings (analysis/sp_grid.py).
"""

from __future__ import annotations

import numpy as np

from dsi_mpi.decoding.judging import Judge
from dsi_mpi.decoding.prompt_state import Cancellation, PromptState
from dsi_mpi.decoding.tasks import Block, Task, TaskLedger
from dsi_mpi.io.records import Event, Outcome


class NonSIThread:
    """One prompt's non-SI thread (see the module docstring); `enabled`: dsi with the thread and 2+ verifiers;
    `sampled`: the acceptance rule samples (no stream)."""

    def __init__(self, state: PromptState, ledger: TaskLedger, judge: Judge, enabled: bool, sampled: bool):
        self.p, self.ledger, self.judge, self.enabled = state, ledger, judge, enabled
        # Pipelined groups take one frontier block after each lost speculation only, as before the thread ran
        # on: a group's stages drop tasks one by one, and frontier tasks racing blocks through them made a
        # stage's cache and rank 0's picture of it part (tests/mpi/test_pipeline.py, sampling, 1 run in 3).
        self.continuous = all(len(ledger.slots.ranks(v)) == 1 for v in state.active)
        self.streams = self.continuous and not sampled
        self.retracted = False  # the text lost its speculation since the last frontier block went out
        self.block: Block | None = None  # its block in flight
        self.next_position = 0  # where the block's next token goes
        self.token_s: float | None = None  # the last time between two of its tokens (a round trip, unstreamed)
        self.due_s: float | None = None  # when its next token should reach rank 0 (on rank 0's time axis)

    def wanted(self) -> bool:
        """Whether a frontier block should go out now: none is in flight at the committed position, no block
        will tell the target's token there, and drafting is on (at k = 0 the verifiers decode anyway)."""
        p = self.p
        if not self.enabled or p.done or p.k == 0 or p.n_committed >= p.end:
            return False
        if self.block is not None:  # in flight at the frontier (or a stream catching up with it: see retire)
            return False
        if not (self.continuous or self.retracted):
            return False
        return not (p.blocks and p.blocks[0].start <= p.n_committed)

    def next_block(self) -> Block:
        p = self.p
        plain = p.end - p.n_committed if self.streams else 0
        self.block = Block(p.n_committed, [], plain=plain, frontier=True, stream=self.streams)
        self.next_position, self.retracted = p.n_committed, False
        self.due_s = p.now() + self.token_s if self.token_s is not None else None
        return self.block

    def holds(self, task: Task) -> bool:
        """Whether `task` is the stream in flight, which a rejection leaves running."""
        return self.block is not None and task.block is self.block and self.block.stream

    def retire(self) -> None:
        """Stop the task of a frontier the committed text has moved past (a CANCEL naming it), unless it is a
        stream that will reach the committed position no later than a new one would (its tokens in flight
        agree with the committed text so far: see take_streamed); and a stream a waiting block overtakes."""
        p, old = self.p, self.block
        if old is None or self._catching_up():
            return
        if self.next_position == p.n_committed and not self._overtaken():
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

    def _overtaken(self) -> bool:
        """A stream at the committed position holding a verifier that a waiting block needs, where a block sent
        earlier will tell the token there sooner (its reply due by the last round trip): it gives the verifier
        back, as a one-token frontier task would have (simulated at c 0.05, a 0.95, V 2-3, adaptive k: kept
        running, it cost up to 1.07x the time of one-token tasks; given back, 1.02x)."""
        p = self.p
        if not self.block.stream or self.due_s is None or p.last_round_trip_s is None:
            return False
        if sum(b.task_id is None for b in p.blocks) <= sum(self.ledger.slots.free(p.active).values()):
            return False  # no block waits for a verifier
        sent = [p.rows[b.task_id]["sent_s"] for b in p.blocks if b.task_id is not None and b.start <= p.n_committed]
        return bool(sent) and min(sent) + p.last_round_trip_s < self.due_s

    def _catching_up(self) -> bool:
        """A stream behind the committed text whose token there is due no later than a new stream's would be
        (measured in the simulator at c 0.9, a 0.3, V 7, adaptive k: restarting it whenever a block's result
        was read before its token cost 1.05x plain decoding's time)."""
        if not self.block.stream or self.due_s is None or self.token_s is None:
            return False
        behind = self.p.n_committed - self.next_position
        return behind > 0 and self.due_s + behind * self.token_s <= self.p.now() + self.token_s

    def stop(self) -> None:
        """The prompt is over: stop the stream, which no newer epoch stops."""
        task = self.ledger.inflight.get(self.block.task_id) if self.block is not None else None
        if task is not None and self.block.stream and not task.cancelled:
            self.ledger.cancel_task(task)
        self.block = None

    def ended(self, task: Task) -> None:
        """Its stream decoded all it was asked to (every token came as it went)."""
        if self.block is task.block:
            self.block = None

    def take_result(self, task: Task, verdict) -> None:
        """A one-token frontier block's token, committed (and judging the draft there) if the text is still
        where it was sent."""
        p, block = self.p, task.block
        if self.block is block:
            self.block = None
        self.token_s = task.row["reply_s"] - task.row["sent_s"]
        if block.start != p.n_committed:
            task.row["outcome"] = Outcome.STALE_RESULT
            return
        block.result = verdict
        self._commit(task, block)

    def take_streamed(self, task: Task, msg, end_s: float) -> None:
        """A stream's token (decoded at verifier time `end_s`), committed (and judging the draft there) if the
        stream is at the committed position; behind it (a block's result was read first), the token must be
        the committed one, or the stream has left the text (its prefix differs in floating point) and stops."""
        p, now = self.p, self.p.now()
        p.event(Event.STREAMED, now, now, task.task_id, msg.position)
        previous = task.row.get("last_token_s")  # when its token before was decoded
        task.row["last_token_s"] = end_s  # the forwards so far (replies.py: a stopped stream's row)
        if p.done or task.block is not self.block or msg.position != self.next_position:
            return
        token = int(msg.payload[0])
        if msg.position < p.n_committed and token != p.seq[msg.position]:
            self.due_s = None
            return self.retire()
        if previous is not None:
            self.token_s = end_s - previous
        self.due_s = end_s + self.token_s if self.token_s is not None else None
        self.next_position += 1
        if msg.position == p.n_committed:
            verdict = np.array([token], dtype=np.int64)
            self._commit(task, Block(msg.position, [], task_id=task.task_id, result=verdict, frontier=True))

    def _commit(self, task: Task, block: Block) -> None:
        task.row["outcome"] = Outcome.USED
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
        """Whether its next token is due within `seconds` from now (by the last time between two of them)."""
        if self.block is None or self.due_s is None:
            return False
        return 0 <= self.due_s - self.p.now() <= seconds
