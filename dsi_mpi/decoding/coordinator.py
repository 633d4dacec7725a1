"""The speculation coordinator on rank 0: one loop for SI and DSI, the policy is a few lines.

Text = committed tokens followed by speculative drafts. The drafter extends the drafts one token at a
time; every k drafts form a block, and each block becomes a verification task for a free verifier
rank (the one whose KV cache already holds the longest part of the block's prefix). Results may come
back in any order and are applied strictly in position order (decoding/judging.py):
  * a draft that differs from the target's token is a rejection: the target's recovered token is committed,
    the epoch rises, every later draft and block is dropped (in-flight ones get a CANCEL, queued ones
    are never sent) and drafting restarts from the corrected text;
  * a fully accepted block also yields the target's token for the next position (the bonus), which
    at once checks the next block's first draft (the paper's immediate pruning); a block not yet sent is
    then cut again from the committed text, so that each block sent carries k drafts still to judge.
The first "block" of a prompt is the target's prefill, which gives the first token exactly as plain
decoding would; likewise, with two or more verifiers the target decodes from the committed position whenever no
block will yield its token there (the paper's non-SI thread, nonsi_thread.py; greedy: a stream of tokens; dsi
never waits for drafts that plain decoding would not need). Policies: `si` keeps one block in flight and does not draft
while it is (classic speculative decoding, blocking); `dsi` keeps drafting while fewer than `max_blocks_ahead`
blocks await results and sends blocks to every free verifier (speculation parallelism).
With `lookahead = 0` in the run settings (ADAPTIVE) k is adaptive (dsi_mpi/decoding/adaptive.py): before
each block the time model's best k at the measured acceptance and latencies, down to 0, where blocks carry
no drafts and the verifiers just decode (plain decoding through the same loop). Each change of k is an event.
The clock is injectable, so that dsi_mpi/timemodel/virtual.py can run this very loop on simulated time.

Where things are: the prompt's state in prompt_state.py (one object per prompt), blocks, tasks and the
ledger of tasks in flight in tasks.py, cutting blocks in blocks.py, applying results in judging.py, reading
replies in replies.py, the non-SI thread in nonsi_thread.py, the choice of k in adaptive.py, verifier slots and
their caches in slots.py. Here: the loop, drafting, dispatching blocks, choosing when k changes, and dropping speculation after a rejection.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dsi_mpi.backends import ModelRunner, common_prefix_len
from dsi_mpi.decoding.acceptance import Greedy
from dsi_mpi.decoding.adaptive import AdaptiveLookahead
from dsi_mpi.decoding.blocks import BlockCutter
from dsi_mpi.decoding.judging import Judge
from dsi_mpi.decoding.nonsi_thread import NonSIThread
from dsi_mpi.decoding.prompt_state import Cancellation, PromptState
from dsi_mpi.decoding.replies import Replies
from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.decoding.tasks import Block, TaskLedger, task_row
from dsi_mpi.io.records import TASK_DTYPE, Event, Outcome, RunRecord

if TYPE_CHECKING:  # the simulator runs this loop without MPI (dsi_mpi/timemodel/virtual.py)
    from dsi_mpi.mpi.channel import Channel


class DraftInterrupted(Exception):
    """A result changed the text while the drafter was computing: its draft would be for a stale text."""


class SpeculativeDecoder:
    """Drives SI or DSI for one prompt at a time; what the verifiers' caches hold persists across prompts."""

    def __init__(
        self,
        channel: Channel,
        drafter: ModelRunner,
        verifiers: list,
        *,
        eos_ids=(),
        clock_offsets_us: dict[int, int] | None = None,
        rule=None,
        clock=time.perf_counter,
    ):
        self.channel = channel
        self.clock = clock  # seconds; time.perf_counter, or a simulated clock (dsi_mpi/timemodel/virtual.py)
        self.adaptive_rules: dict[str, AdaptiveLookahead] = {}  # per policy, kept from prompt to prompt
        self.drafter = drafter
        self.ledger = TaskLedger(channel, verifiers, clock_offsets_us)  # plain ranks or tuples of stage ranks
        self.eos_ids = frozenset(int(t) for t in eos_ids)  # each run's RunSettings.stop_at_eos decides
        self.rule = rule or Greedy()  # greedy or sampling (dsi_mpi/decoding/acceptance.py)

    @property
    def verifiers(self) -> list[int]:
        return self.ledger.verifiers

    # ---------------------------------------------------------------- public
    def generate(self, policy: str, prompt: list[int], record: RunRecord, run: RunSettings) -> RunRecord:
        """Run `policy` on one prompt with `run`'s settings (dsi uses the first `run.verifiers` verifier
        ranks, 0: all; `run.key` keys the random streams of sampling; `run.adaptive`: k chosen per block)."""
        self.p = p = self._prompt_state(policy, prompt, record, run)
        self.judge = Judge(p, self.rule, lambda: self.ledger.epoch, self._retract)
        nonsi = p.policy == "dsi" and run.nonsi_thread and p.capacity >= 2
        self.nonsi = NonSIThread(p, self.ledger, self.judge, nonsi, self.rule.sampled)
        self.replies = Replies(p, self.ledger, self.judge, self.nonsi, self.rule.sampled)
        self.cutter = BlockCutter(p, lambda: self.ledger.epoch, self._choose_lookahead)
        self.drafter.set_layer_callback(self._between_drafter_layers)
        self._choose_lookahead()
        self._start_prefills()
        self.drafter.reset()
        start = p.now()
        self._append_draft(self.rule.draft(self.drafter, prompt, len(prompt), p.key))  # the prefill drafts position 0
        record.drafter_prefill_s = p.now() - start
        p.event(Event.DRAFTER_PREFILL, start, p.now(), value=len(prompt))
        self.cutter.form()
        while not p.done:
            self.replies.read_waiting()
            if p.done:
                break
            if p.k == 0 and not p.blocks:  # nothing will be drafted: the next block forms now
                self._choose_lookahead()
                self.cutter.form()
            self._dispatch()
            if self._may_draft():
                self._draft_one()
                self.cutter.form()
                self._dispatch()
            else:
                waited_from = p.now()
                self.channel.poller.wait_for(self.replies.read_one, self._waiting_for())
                p.event(Event.WAIT, waited_from, p.now())
        self._finish()
        return record

    def _prompt_state(self, policy: str, prompt: list[int], record: RunRecord, run: RunSettings) -> PromptState:
        if policy not in ("si", "dsi"):
            raise ValueError(policy)
        verifiers = self.verifiers
        active = verifiers[:1] if policy == "si" else verifiers[: run.verifiers or len(verifiers)]
        capacity = self.ledger.slots.capacity(active)
        adaptive = self.adaptive_rules.setdefault(policy, AdaptiveLookahead(policy)) if run.adaptive else None
        if adaptive is not None:  # speculation parallelism prices k by the verifiers free to take blocks
            adaptive.servers = capacity if policy == "dsi" and run.nonsi_thread else 1
        return PromptState(
            policy=policy,
            run=run,
            record=record,
            seq=list(prompt),
            active=active,
            capacity=capacity,
            max_ahead=1 if policy == "si" else (run.max_blocks_ahead or capacity + 1),
            eos_ids=self.eos_ids if run.stop_at_eos else frozenset(),
            adaptive=adaptive,
            clock=self.clock,
        )

    # ---------------------------------------------------------------- drafting
    def _may_draft(self) -> bool:
        """si drafts only while nothing is in flight; dsi while fewer than max_ahead blocks await results,
        and then one draft more: the one that a fully accepted block's bonus token checks at once, so that
        the next block still has k drafts of its own (see BlockCutter.recut_unsent)."""
        p = self.p
        if len(p.seq) >= p.end or p.drafter_has_nothing(self.ledger.epoch) or p.k == 0:
            return False
        if p.policy != "dsi":
            return not p.blocks
        awaiting = sum(1 for b in p.blocks if b.result is None)
        if awaiting < p.max_ahead:
            return True
        last = p.blocks[-1]
        pipelined = p.max_ahead > 1  # with one block ahead, dsi is si's blocking loop
        return (
            pipelined
            and awaiting == p.max_ahead
            and len(p.seq) <= last.start + len(last.drafts)
            and self._draft_ends_before_a_reply()
        )

    def _draft_ends_before_a_reply(self) -> bool:
        """Whether one more draft step, at the last one's length, ends before the first reply in flight is
        due (sent + the last verification's round trip): a drafter busy on a draft that is not needed yet
        would read that reply late (measured in the simulator at c 0.8, a 0.4, k 1, one verifier, replies
        read between steps: 1.32x slower than without the extra draft). Unknown times: no."""
        p, inflight = self.p, self.ledger.inflight
        if p.last_draft_s is None or p.last_round_trip_s is None or not inflight:
            return False
        due = min(t.row["sent_s"] for t in inflight.values()) + p.last_round_trip_s
        return p.now() + p.last_draft_s <= due

    def _draft_one(self) -> None:
        """One drafter forward: feed what its cache lacks of the text, append its draft.
        Results are handled between the drafter's layers (see `_between_drafter_layers`); if one changes
        the text under the draft (a rejection, or a bonus token taking this position) the draft is dropped."""
        p = self.p
        position = len(p.seq)
        keep = min(common_prefix_len(self.drafter.tokens, p.seq), position - 1)
        self.drafter.crop(keep)
        p.drafting = (self.ledger.epoch, position)
        start = p.now()
        try:
            token = self.rule.draft(self.drafter, p.seq[keep:position], position, p.key)
        except DraftInterrupted:
            p.event(Event.DRAFT_INTERRUPTED, start, p.now(), value=position)
            return
        finally:
            p.drafting = None
            p.record.draft_s += p.now() - start
        end, fed = p.now(), position - keep
        if fed == 1:
            p.event(Event.DRAFT, start, end, value=position)
        else:  # the step also fed committed tokens the drafter lacked: timed apart from one draft
            p.event(Event.DRAFT_CATCH_UP, start, end, task_id=fed, value=position)
        p.last_draft_s = end - start
        if p.adaptive is not None:
            p.adaptive.observe_draft(p.last_draft_s, fed)
        self._append_draft(token)
        if p.deferred is not None and p.deferred.position == position:
            self.judge.observed(self.judge.settle)

    def _append_draft(self, token: int | None) -> None:
        """Extend the text by a draft; a drafter with nothing to propose (no n-gram match) instead marks this
        text, so that the drafts so far go out as a block (possibly of none) rather than wait for more."""
        p = self.p
        if token is None:
            p.no_proposal = (self.ledger.epoch, len(p.seq))
            p.record.draft_misses += 1
            return
        p.record.drafted += 1
        p.seq.append(token)

    def _between_drafter_layers(self) -> None:
        """Keep verifiers busy while the drafter computes: apply arrived results and send waiting blocks
        now, not after the draft step; abandon the step if the text it extends has changed."""
        p = self.p
        if p.drafting is None:
            return
        if self.replies.read_waiting():
            self._dispatch()
        self._await_nonsi_reply()
        if p.done or (self.ledger.epoch, len(p.seq)) != p.drafting:
            raise DraftInterrupted

    def _await_nonsi_reply(self) -> None:
        """Between two drafter layers: when the non-SI thread's reply is due before the next layer would end,
        wait for it here (at most one layer's time) rather than read it a layer late: the text depends on it
        now, the draft in progress only perhaps (in the simulator at c 0.7, a 0: 1.05x plain decoding's time
        when read at the next layer, 1.00x when awaited)."""
        if self.p.last_draft_s is None:
            return
        layer_s = self.p.last_draft_s / max(self.drafter.n_layers, 1)
        if self.nonsi.reply_due_within(layer_s) and self.channel.poller.wait_briefly(self.replies.read_one, layer_s):
            self.replies.read_waiting()
            self._dispatch()

    # ---------------------------------------------------------------- k
    def _choose_lookahead(self) -> None:
        """Adaptive speculation: the k of the next block (recorded when it changes). At k = 0 nothing is
        drafted, so a position that waits for its draft (sampling, dsi) takes the target's draw instead."""
        p = self.p
        if p.adaptive is None:
            return
        k = p.adaptive.next_lookahead()
        if k != p.k:
            p.k = k
            p.event(Event.LOOKAHEAD, p.now(), p.now(), value=k)
            if k == 0 and p.deferred is not None:
                self.judge.settle()

    def _retract(self) -> None:
        """The text lost its speculation (a rejection, or a restart): a new epoch, every block dropped and
        every stale task told to stop, then k afresh (the non-SI thread goes on from the committed text at
        the next dispatch)."""
        self.ledger.epoch += 1
        self._cancel_all()
        self.nonsi.retracted = True
        self.p.restarted_s = self.p.now()
        self._choose_lookahead()

    # ---------------------------------------------------------------- tasks
    def _start_prefills(self) -> None:
        """Every active verifier prefills the prompt from an empty cache (fresh state per run); the first
        reply commits token 0, exactly what plain decoding's prefill yields."""
        p = self.p
        block = Block(p.n_prompt, [])
        p.blocks.append(block)
        for i, v in enumerate(p.active):
            self._send_task(v, block if i == 0 else None, list(p.seq), base=0)

    def _send_task(self, verifier: int, block: Block | None, sequence: list[int], base: int) -> None:
        p = self.p
        extras = self.rule.task_extras(block.drafts, block.start) if block else []
        task = self.ledger.send(verifier, block, sequence, base, p.key, extras)
        start, n_drafts = (block.start, len(block.drafts)) if block else (p.n_prompt, 0)
        task.row = p.rows[task.task_id] = task_row(task, start, n_drafts, base, p.now())
        p.event(Event.TASK_SENT, task.row["sent_s"], task.row["sent_s"], task.task_id, verifier)
        if block:
            block.task_id = task.task_id
            self._observe_restart(block)

    def _observe_restart(self, block: Block) -> None:
        """Adaptive speculation: the seconds from a restart (si's result, or a rejection) to the next block's
        send, beyond its drafts at d: the coordinator's own work and catch-up steps, which the rule prices."""
        p = self.p
        since, p.restarted_s = p.restarted_s, None  # the next block after a restart, whatever it is, closes it
        if since is None or p.adaptive is None or block.frontier or block.plain or not block.drafts:
            return
        d = p.adaptive.draft_seconds
        if d is not None:
            p.adaptive.observe_restart(p.now() - since - len(block.drafts) * d)

    def _dispatch(self) -> None:
        """Send waiting blocks, in order, each to the verifier with room whose caches will cover most of its
        prefix (a pipelined group takes up to one task per stage)."""
        self.cutter.recut_unsent()
        self.nonsi.retire()
        p = self.p
        free = self.ledger.slots.free(p.active)
        for block in p.blocks:
            if not free:
                return
            if block.task_id is None:
                self._send_to_best(free, block)
        if free and self.nonsi.wanted():  # the non-SI thread takes a verifier no block is waiting for
            self._send_to_best(free, self.nonsi.next_block())

    def _send_to_best(self, free: dict[int, int], block: Block) -> None:
        """Send `block` to the free verifier whose caches cover most of its prefix; one slot of it taken."""
        slots, sequence = self.ledger.slots, self.p.seq[: block.start + len(block.drafts)]
        overlap = {v: slots.base_for(v, sequence, self.ledger.epoch) for v in free}
        best = max(free, key=lambda v: (overlap[v], -v))
        free[best] -= 1
        if not free[best]:
            del free[best]
        self._send_task(best, block, sequence, base=min(overlap[best], block.start - 1))

    def _cancel_all(self, after_rejection: bool = True) -> None:
        """Drop every block; queued ones are never sent, in-flight ones are told to stop. A result that
        arrived early is stale now. A prefill of the unchanged prompt, and the non-SI thread's stream, which
        decode the committed text, are left running after a rejection."""
        p = self.p
        now = p.now()
        for block in p.blocks:
            if block.task_id is None:
                p.record.blocks_unsent += 1
            elif block.result is not None:  # arrived early, now useless
                p.rows[block.task_id]["outcome"] = Outcome.STALE_RESULT
        p.blocks.clear()
        stale = [
            task
            for task in self.ledger.inflight.values()
            if task.epoch < self.ledger.epoch
            and task.task_id not in p.pending_cancels
            and not (task.block is None and after_rejection)
            and not (self.nonsi.holds(task) and after_rejection)
        ]
        self.ledger.cancel(stale)
        for task in stale:
            p.event(Event.CANCEL_SENT, now, now, task.task_id, task.verifier)
            if after_rejection:
                p.pending_cancels[task.task_id] = Cancellation(task.task_id, task.verifier, now)

    def _waiting_for(self) -> str:
        p = self.p
        blocks = [(b.start, len(b.drafts), b.task_id, b.result is not None) for b in p.blocks]
        return self.ledger.waiting_for() or (
            f"nothing: coordinator stalled ({p.policy}, committed {p.n_committed}, text {len(p.seq)}, "
            f"end {p.end}, blocks {blocks})"
        )

    # ---------------------------------------------------------------- the end
    def _finish(self) -> None:
        """Stop the clock, cancel what is still running and wait for every reply, so the next run starts
        with idle verifiers and a known cache state; the record's task counts from its tasks table, its
        rejections from its events."""
        p, record = self.p, self.p.record
        record.wall_s = record.commit_times[-1] if record.commit_times else p.now()
        record.ttft_s = record.commit_times[0] if record.commit_times else float("nan")
        record.tokens = [int(t) for t in p.seq[p.n_prompt : p.n_committed]]
        self.ledger.epoch += 1
        self._cancel_all(after_rejection=False)
        self.nonsi.stop()

        def drained():
            while self.ledger.inflight and self.replies.read_one():
                pass
            return None if self.ledger.inflight else True

        self.channel.poller.wait_for(drained, self._waiting_for())
        record.tasks = [tuple(row[name] for name in TASK_DTYPE.names) for row in p.rows.values()]
        outcomes = [row["outcome"] for row in p.rows.values()]
        record.tasks_sent = len(outcomes)
        record.tasks_used = outcomes.count(Outcome.USED)
        record.tasks_stale = sum(o in (Outcome.STALE_RESULT, Outcome.ABANDONED) for o in outcomes)
        record.rejections = sum(1 for event in record.events if event[1] == Event.REJECT)
