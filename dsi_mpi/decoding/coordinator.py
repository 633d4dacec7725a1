"""The speculation coordinator on rank 0: one loop for SI and DSI, the policy is a few lines.

Text = committed tokens followed by speculative drafts. The drafter extends the drafts one token at a
time; every k drafts form a block, and each block becomes a verification task for a free verifier
rank (the one whose KV cache already holds the longest part of the block's prefix). Results may come
back in any order and are applied strictly in position order:
  * a draft that differs from the target's token is a rejection: the target's token is committed,
    the epoch rises, every later draft and block is dropped (in-flight ones get a CANCEL, queued ones
    are never sent) and drafting restarts from the corrected text;
  * a fully accepted block also yields the target's token for the next position (the "bonus"), which
    at once checks the next block's first draft (the paper's immediate pruning); a block not yet sent is
    then cut again from the committed text, so that each block sent carries k drafts still to judge.
The first "block" of a prompt is the target's prefill, which gives the first token exactly as plain
decoding would; likewise, right after a rejection dsi sends a block of no drafts, so the target goes on
producing its own next token while the drafter catches up (the paper's non-SI thread: dsi never waits
for drafts that plain decoding would not need). Policies: `si` keeps one block in flight and does not draft while it is (classic
speculative decoding, blocking); `dsi` keeps drafting while fewer than `max_blocks_ahead` blocks await
results and sends blocks to every free verifier (speculation parallelism).
With `lookahead = 0` in the run settings k is adaptive (dsi_mpi/decoding/adaptive.py): before each block
the time model's best k at the measured acceptance and latencies, down to 0, where blocks carry no drafts
and the verifiers just decode (plain decoding through the same loop). Each change of k is an event.
The clock is injectable, so that dsi_mpi/virtual.py can run this very loop on simulated time.
Blocks, tasks and their rows are in dsi_mpi/decoding/tasks.py, the choice of k in adaptive.py and verifier
placement in placement.py; what stays here is one state machine over the text, the blocks and the epoch,
kept in one class (about 580 lines) because every method reads or changes that same state.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from dsi_mpi.backends import ModelRunner, common_prefix_len
from dsi_mpi.decoding.acceptance import Greedy
from dsi_mpi.decoding.adaptive import AdaptiveLookahead
from dsi_mpi.decoding.placement import VerifierSlots
from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.decoding.tasks import Block, Task, split_stage_records, task_row
from dsi_mpi.io.records import TASK_DTYPE, Event, Outcome, RunRecord
from dsi_mpi.mpi import protocol

if TYPE_CHECKING:  # the simulator runs this loop without MPI (dsi_mpi/virtual.py)
    from dsi_mpi.mpi.channel import Channel


class DraftInterrupted(Exception):
    """A result changed the text while the drafter was computing: its draft would be for a stale text."""


class SpeculativeDecoder:
    """Drives SI or DSI for one prompt at a time; verifier cache knowledge persists across prompts."""

    def __init__(
        self,
        channel: Channel,
        drafter: ModelRunner,
        verifiers: list,
        eos_ids=(),
        stop_at_eos: bool = True,
        clock_offsets_us: dict[int, int] | None = None,
        rule=None,
        clock=time.perf_counter,
    ):
        self.channel = channel
        self.clock = clock  # seconds; time.perf_counter, or a simulated clock (dsi_mpi/virtual.py)
        self.adaptive_rules: dict[str, AdaptiveLookahead] = {}  # per policy, kept from prompt to prompt
        self.drafter = drafter
        self.slots = VerifierSlots(verifiers)  # plain ranks, or tuples of stage ranks (pipelined groups)
        self.verifiers = self.slots.ids
        self.all_eos_ids = frozenset(int(t) for t in eos_ids)  # each run's RunSettings.stop_at_eos decides
        self.eos_ids = self.all_eos_ids if stop_at_eos else frozenset()
        self.inflight: dict[int, Task] = {}  # task id -> task awaiting its one reply
        self.epoch = 0
        self.next_task_id = 0
        self.offsets_us = clock_offsets_us or {}  # verifier clock - rank 0 clock (dsi_mpi.mpi.clock)
        self.rule = rule or Greedy()  # greedy or sampling (dsi_mpi/decoding/acceptance.py)

    # ---------------------------------------------------------------- public
    def generate(self, policy: str, prompt: list[int], record: RunRecord, run: RunSettings) -> RunRecord:
        """Run `policy` on one prompt with `run`'s settings (dsi uses the first `run.verifiers` verifier
        ranks, 0: all; `run.key` keys the random streams of sampling; `run.lookahead` 0: adaptive k)."""
        if policy not in ("si", "dsi"):
            raise ValueError(policy)
        self.policy = policy
        self.k = run.lookahead
        self.lookahead_rule = (
            None if run.lookahead else self.adaptive_rules.setdefault(policy, AdaptiveLookahead(policy))
        )
        self.key = key = run.key
        self.nonsi_thread = run.nonsi_thread
        self.eos_ids = self.all_eos_ids if run.stop_at_eos else frozenset()
        self.active = self.verifiers[:1] if policy == "si" else self.verifiers[: run.verifiers or len(self.verifiers)]
        self.capacity = self.slots.capacity(self.active)  # tasks the active verifiers take at once
        self.max_ahead = 1 if policy == "si" else (run.max_blocks_ahead or self.capacity + 1)
        self.record = record
        self.seq = list(prompt)
        self.n_prompt = len(prompt)
        self.n_committed = len(prompt)
        self.end = len(prompt) + run.max_new_tokens
        self.blocks: deque[Block] = deque()
        self.pending_cancels: dict[int, list] = {}
        self.rows: dict[int, dict] = {}
        self.done = False
        self.t0 = self.clock()
        self._drafting = None
        self.deferred = None  # (verdict, j, position) waiting for the draft at position (sampling, dsi)
        self.drafter.set_layer_callback(self._between_drafter_layers)

        self.no_proposal = None  # (epoch, position) where the drafter had nothing to propose
        self.last_draft_s = self.last_round_trip_s = None  # seconds of the last draft step and verification
        self._choose_lookahead()
        self._start_prefills()
        self.drafter.reset()
        start = self._now()
        self._append_draft(self.rule.draft(self.drafter, prompt, len(prompt), key))  # the prefill drafts position 0
        record.drafter_prefill_s = self._now() - start
        self._event(Event.DRAFTER_PREFILL, start, self._now(), value=len(prompt))
        self._form_blocks()
        while not self.done:
            self._handle_waiting_messages()
            if self.done:
                break
            if self.k == 0 and not self.blocks:  # nothing will be drafted: the next block forms now
                self._choose_lookahead()
                self._form_blocks()
            self._dispatch()
            if self._may_draft():
                self._draft_one()
                self._form_blocks()
                self._dispatch()
            else:
                waited_from = self._now()
                self.channel.poller.wait_for(self._handle_one_message, self._waiting_for())
                self._event(Event.WAIT, waited_from, self._now())
        self._finish()
        return record

    # ---------------------------------------------------------------- drafting
    def _now(self) -> float:
        return self.clock() - self.t0

    def _event(self, kind: int, t0: float, t1: float, task_id: int = -1, value: int = 0, rank: int = 0) -> None:
        self.record.events.append((rank, kind, t0, t1, task_id, value))

    def _verifier_time(self, rank: int, us: int) -> float:
        """A verifier's timestamp on rank 0's time axis, in seconds from the run's start."""
        return (us - self.offsets_us.get(rank, 0)) * 1e-6 - self.t0

    def _may_draft(self) -> bool:
        """si drafts only while nothing is in flight; dsi while fewer than max_ahead blocks await results,
        and then one draft more: the one that a fully accepted block's bonus token checks at once, so that
        the next block still has k drafts of its own (see `_recut_unsent`)."""
        if len(self.seq) >= self.end or self._drafter_has_nothing() or self.k == 0:
            return False
        if self.policy != "dsi":
            return not self.blocks
        awaiting = sum(1 for b in self.blocks if b.result is None)
        if awaiting < self.max_ahead:
            return True
        last = self.blocks[-1]
        pipelined = self.max_ahead > 1  # with one block ahead, dsi is si's blocking loop
        return (
            pipelined
            and awaiting == self.max_ahead
            and len(self.seq) <= last.start + len(last.drafts)
            and self._draft_ends_before_a_reply()
        )

    def _draft_ends_before_a_reply(self) -> bool:
        """Whether one more draft step, at the last one's length, ends before the first reply in flight is
        due (sent + the last verification's round trip): a drafter busy on a draft that is not needed yet
        would read that reply late (measured in the simulator at c 0.8, a 0.4, k 1, one verifier, replies
        read between steps: 1.32x slower than without the extra draft). Unknown times: no."""
        if self.last_draft_s is None or self.last_round_trip_s is None or not self.inflight:
            return False
        due = min(t.row["sent_s"] for t in self.inflight.values()) + self.last_round_trip_s
        return self._now() + self.last_draft_s <= due

    def _draft_one(self) -> None:
        """One drafter forward: feed what its cache lacks of the text, append its draft.
        Results are handled between the drafter's layers (see `_between_drafter_layers`); if one changes
        the text under the draft (a rejection, or a bonus token taking this position) the draft is dropped."""
        position = len(self.seq)
        keep = min(common_prefix_len(self.drafter.tokens, self.seq), position - 1)
        self.drafter.crop(keep)
        self._drafting = (self.epoch, position)
        start = self._now()
        try:
            token = self.rule.draft(self.drafter, self.seq[keep:position], position, self.key)
        except DraftInterrupted:
            self._event(Event.DRAFT_INTERRUPTED, start, self._now(), value=position)
            return
        finally:
            self._drafting = None
            self.record.draft_s += self._now() - start
        end, fed = self._now(), position - keep
        if fed == 1:
            self._event(Event.DRAFT, start, end, value=position)
        else:  # the step also fed committed tokens the drafter lacked: timed apart from one draft
            self._event(Event.DRAFT_CATCH_UP, start, end, task_id=fed, value=position)
        self.last_draft_s = end - start
        if self.lookahead_rule is not None:
            self.lookahead_rule.observe_draft(self.last_draft_s, fed)
        self._append_draft(token)
        if self.deferred is not None and self.deferred[2] == position:
            self._observed(self._settle)

    def _append_draft(self, token: int | None) -> None:
        """Extend the text by a draft; a drafter with nothing to propose (no n-gram match) instead marks this
        text, so that the drafts so far go out as a block (possibly of none) rather than wait for more."""
        if token is None:
            self.no_proposal = (self.epoch, len(self.seq))
            self.record.draft_misses += 1
            return
        self.record.drafted += 1
        self.seq.append(token)

    def _drafter_has_nothing(self) -> bool:
        """True until the text changes after the drafter found nothing to propose for it."""
        return self.no_proposal == (self.epoch, len(self.seq))

    def _between_drafter_layers(self) -> None:
        """Keep verifiers busy while the drafter computes: apply arrived results and send waiting blocks
        now, not after the draft step; abandon the step if the text it extends has changed."""
        if self._drafting is None:
            return
        if self._handle_waiting_messages():
            self._dispatch()
        if self.done or (self.epoch, len(self.seq)) != self._drafting:
            raise DraftInterrupted

    def _form_blocks(self) -> None:
        """Cut the drafts into blocks of k; a shorter last block when no more drafts will come (the end of
        the generation, a drafter with nothing to propose, or k = 0 with drafts left from before), and when
        nothing is drafted and nothing is awaited, a block of no drafts: the target just produces its next
        token, as in plain decoding. Adaptive k is chosen afresh for the block after each one formed."""
        start = self._next_block_start()
        while True:
            no_more = len(self.seq) >= self.end or self._drafter_has_nothing() or self.k == 0
            available = len(self.seq) - start
            if (self.k and available >= self.k) or (available > 0 and no_more):
                n = min(self.k or available, available)
                self.blocks.append(Block(start, self.seq[start : start + n]))
                start += n
            elif no_more and not self.blocks and self.n_committed < self.end:
                plain = self.lookahead_rule.plain_run(self.end - start) if self._plain_runs() else 0
                self.blocks.append(Block(start, [], plain=plain))
            else:
                return
            self._choose_lookahead()

    def _next_block_start(self) -> int:
        """Where the next block starts: after the last block, and never before the committed text."""
        last = self.blocks[-1] if self.blocks else None
        return max(last.start + len(last.drafts) if last else self.n_committed, self.n_committed)

    def _recut_unsent(self) -> None:
        """Immediate pruning commits the first draft of the next block; sent as it is, that block would
        verify k - 1 drafts in a forward of k tokens, and with one verifier every block would (measured in
        the simulator at a 0.8, k 1: dsi 0.83x si). So unsent blocks that start before the committed text
        are cut again from it, from the drafts already made (up to k each). Never waiting for more: with no
        draft past the committed text the block goes as it was (it still yields the target's next token).
        si is left as it was, the blocking loop whose expected latency simulator.si_expected_latency gives,
        and so is dsi with one block ahead, which is that loop."""
        if self.policy != "dsi" or self.max_ahead < 2:
            return
        if not any(b.task_id is None and b.drafts and b.start < self.n_committed for b in self.blocks):
            return
        unsent = []  # unsent blocks are a suffix: dispatch sends in order
        while self.blocks and self.blocks[-1].task_id is None and self.blocks[-1].drafts:
            unsent.append(self.blocks.pop())
        start = self._next_block_start()
        if len(self.seq) <= start:
            self.blocks.extend(reversed(unsent))
            return
        self._form_blocks()
        last = self.blocks[-1] if self.blocks else None
        if last is None or last.task_id is not None:  # fewer than k drafts: send those, do not wait
            self.blocks.append(Block(start, self.seq[start : start + (self.k or len(self.seq))]))

    def _plain_runs(self) -> bool:
        """At adaptive k = 0 a block of no drafts asks a plain verifier rank to decode a run of tokens itself
        (a pipelined group's stages decode one token per task: the stage loop knows no runs)."""
        return self.k == 0 and self.lookahead_rule is not None and self.capacity == len(self.active)

    def _choose_lookahead(self) -> None:
        """Adaptive speculation: the k of the next block (recorded when it changes). At k = 0 nothing is
        drafted, so a position that waits for its draft (sampling, dsi) takes the target's draw instead."""
        if self.lookahead_rule is None:
            return
        k = self.lookahead_rule.next_lookahead()
        if k != self.k:
            self.k = k
            self._event(Event.LOOKAHEAD, self._now(), self._now(), value=k)
            if k == 0 and self.deferred is not None:
                self._settle()

    def _observed(self, apply) -> None:
        """Run `apply` (which judges drafts) and tell adaptive speculation how many it compared and accepted."""
        accepted, compared = self.record.accepted, self.record.compared
        apply()
        if self.lookahead_rule is not None:
            self.lookahead_rule.observe_acceptance(self.record.accepted - accepted, self.record.compared - compared)

    # ---------------------------------------------------------------- tasks
    def _start_prefills(self) -> None:
        """Every active verifier prefills the prompt from an empty cache (fresh state per run); the first
        reply commits token 0, exactly what plain decoding's prefill yields."""
        block = Block(self.n_prompt, [])
        self.blocks.append(block)
        for i, v in enumerate(self.active):
            self._send_task(v, block if i == 0 else None, list(self.seq), base=0)

    def _send_task(self, verifier: int, block: Block | None, sequence: list[int], base: int) -> None:
        task = Task(self.next_task_id, verifier, self.epoch, sequence, block)
        self.next_task_id += 1
        n_out = (len(block.drafts) if block else 0) + 1
        extras = self.rule.task_extras(block.drafts, block.start) if block else []
        self.channel.send(
            self.slots.ranks(verifier)[0],
            protocol.TASK,
            sequence[base:] + extras,
            task_id=task.task_id,
            epoch=self.epoch,
            base=base,
            n_out=n_out,
            key=self.key,
            n_extras=len(extras),
            plain=block.plain if block else 0,
        )
        task.row = task_row(task, block.start if block else self.n_prompt, n_out - 1, base, self._now())
        self.rows[task.task_id] = task.row
        self.inflight[task.task_id] = task
        self._event(Event.TASK_SENT, task.row["sent_s"], task.row["sent_s"], task.task_id, verifier)
        self.slots.sent(task, base)
        if block:
            block.task_id = task.task_id
        self.record.tasks_sent += 1

    def _dispatch(self) -> None:
        """Send waiting blocks, in order, each to the verifier with room whose caches will cover most of its
        prefix (a pipelined group takes up to one task per stage)."""
        self._recut_unsent()
        free = self.slots.free(self.active)
        for block in self.blocks:
            if not free:
                return
            if block.task_id is not None:
                continue
            sequence = self.seq[: block.start + len(block.drafts)]
            overlap = {v: self.slots.base_for(v, sequence, self.epoch) for v in free}
            best = max(free, key=lambda v: (overlap[v], -v))
            free[best] -= 1
            if not free[best]:
                del free[best]
            self._send_task(best, block, sequence, base=min(overlap[best], block.start - 1))

    # ---------------------------------------------------------------- replies
    def _waiting_for(self) -> str:
        ranks = self.slots.busy_ranks()
        if ranks:
            return f"verification results from rank(s) {ranks}"
        blocks = [(b.start, len(b.drafts), b.task_id, b.result is not None) for b in self.blocks]
        return (
            f"nothing: coordinator stalled ({self.policy}, committed {self.n_committed}, text {len(self.seq)}, "
            f"end {self.end}, blocks {blocks})"
        )

    def _handle_waiting_messages(self) -> bool:
        handled = False
        while not self.done and self._handle_one_message():
            handled = True
        return handled

    def _handle_one_message(self):
        got = self.channel.poll()
        if got is None:
            return None
        source, msg = got
        if msg.kind not in (protocol.RESULT, protocol.ABORTED):
            raise protocol.ProtocolError(f"rank {source} sent an unexpected {protocol.KIND_NAMES[msg.kind]}")
        task = self.inflight.get(msg.task_id)
        if task is None or task.epoch != msg.epoch:
            raise protocol.ProtocolError(f"rank {source} replied for unknown task {msg.task_id} (epoch {msg.epoch})")
        plain = task.block.plain if task.block is not None else 0
        if plain and msg.kind == protocol.RESULT:  # a plain run fed back all its tokens but the last: cached too
            task.sequence = task.sequence + [int(t) for t in msg.payload[: plain - 1]]
        problem = self.slots.replied(task, source, msg)
        if problem:
            raise protocol.ProtocolError(problem)
        del self.inflight[msg.task_id]
        now = self._now()
        payload = self._stage_records(task, msg)
        first = self.slots.ranks(task.verifier)[0]
        start, end = self._verifier_time(first, msg.start_us), self._verifier_time(source, msg.end_us)
        task.row.update(reply_s=now, start_s=start, end_s=end, busy_s=end - start)
        self._event(Event.RESULT_RECEIVED, now, now, task.task_id, source)
        cancel = self.pending_cancels.pop(task.task_id, None)
        if cancel is not None:  # [task, verifier, rejected_s, stopped_s, reply_s, busy_after_s, aborted]
            cancel[3:7] = [end, now, max(end - cancel[2], 0.0), int(msg.kind == protocol.ABORTED)]
            self.record.cancellations.append(tuple(cancel))
        if msg.kind == protocol.ABORTED:
            if task.epoch == self.epoch and task.block is not None:
                raise protocol.ProtocolError(f"rank {source} aborted task {task.task_id}, which was not cancelled")
            task.row["outcome"] = Outcome.ABANDONED
            if not msg.n_stages:
                self._event(Event.VERIFY_ABORTED, start, end, task.task_id, 0, rank=source)
            self.record.tasks_stale += 1
            return True
        task.row.update(computed=msg.computed, reused=msg.reused)
        if not msg.n_stages:
            self._event(Event.VERIFY, start, end, task.task_id, msg.computed, rank=source)
        if task.block is None:
            return True
        if task.row["base"] > 0:  # not a prefill: a verification's time
            round_trip = now - task.row["sent_s"]
            if not plain:  # a plain run decodes several tokens: not one verification's round trip
                self.last_round_trip_s = round_trip
            if self.lookahead_rule is not None:
                self.lookahead_rule.observe_verification(round_trip, len(task.block.drafts) + 1, plain)
        if task.epoch != self.epoch:
            task.row["outcome"] = Outcome.STALE_RESULT
            self.record.tasks_stale += 1
            return True
        if (plain or not self.rule.sampled) and len(payload) != (plain or len(task.block.drafts) + 1):
            raise protocol.ProtocolError(
                f"rank {source} returned {len(payload)} tokens for a block of {len(task.block.drafts)} drafts"
            )
        task.block.result = payload
        task.row["outcome"] = Outcome.USED
        self.record.tasks_used += 1
        while self.blocks and self.blocks[0].result is not None and not self.done:
            block, accepted = self.blocks.popleft(), self.record.accepted
            self._observed(lambda b=block: self._apply(b))
            self.rows[block.task_id]["accepted"] = self.record.accepted - accepted
        return True

    def _stage_records(self, task: Task, msg) -> np.ndarray:
        """A pipelined group's reply ends with one record per stage: keep them (the stages table, and each
        stage's forward as an event of its own rank); return the verdict before them."""
        verdict, stages = split_stage_records(msg.payload, msg.n_stages)
        kinds = {protocol.STAGE_COMPUTED: Event.VERIFY, protocol.STAGE_ABORTED: Event.VERIFY_ABORTED}
        for index, (rank, status, t0, t1) in enumerate(stages):
            start, end = self._verifier_time(rank, t0), self._verifier_time(rank, t1)
            self.record.stages.append((task.task_id, task.verifier, index, rank, status, start, end))
            if status in kinds:
                self._event(
                    kinds[status], start, end, task.task_id, msg.computed if msg.kind == protocol.RESULT else 0, rank
                )
        return verdict

    def _apply(self, block: Block) -> None:
        """Commit the drafts that stand; where they stop, the target's token: a replacement for a draft that
        does not stand (a rejection), or, after the whole block, a check of the next draft (immediate
        pruning) or a fresh token if nothing is drafted there yet."""
        rule, result, key = self.rule, block.result, self.key
        if block.plain:  # the target's own tokens, decoded on the verifier (nothing is drafted at k = 0)
            assert block.start == self.n_committed, "a plain run applied out of order"
            del self.seq[self.n_committed :]
            for token in result:
                self.seq.append(int(token))
                self._commit()
                if self.done:
                    return
            return
        offset = self.n_committed - block.start
        assert 0 <= offset <= len(block.drafts), "blocks applied out of order"
        j = rule.stop(result, block.drafts, offset)
        if j < offset:  # the verifier judged a committed draft differently (floating point): verify again
            self.record.restarts += 1
            return self._restart()
        for _ in range(offset, j):
            self.record.compared += 1
            self.record.accepted += 1
            self._commit()
            if self.done:
                return
        position = block.start + j
        if j < len(block.drafts):
            self.record.compared += 1
            return self._reject(position, rule.replacement(result, j, position, key))
        if position < len(self.seq):  # the next position is drafted: prune at once
            self.record.compared += 1
            if not rule.check(result, j, position, self.seq[position], key):
                return self._reject(position, rule.replacement(result, j, position, key))
            self.record.accepted += 1
        elif rule.sampled and self.policy == "dsi" and self.k > 0 and not self._drafter_has_nothing():
            # Whether the drafter got here first depends on timing; so that tokens do not, the position
            # waits for its draft and is judged like any other (see _settle).
            self.deferred = (result, j, position)
            return
        else:
            self.seq.append(rule.fresh(result, j, position, key))
        self._commit()

    def _settle(self) -> None:
        """Judge the draft that has just arrived at a deferred position (none: the drafter had nothing to
        propose there, which depends on the text only, so the target's own draw stands, as without drafts)."""
        result, j, position = self.deferred
        self.deferred = None
        if len(self.seq) == position:
            self.seq.append(self.rule.fresh(result, j, position, self.key))
            return self._commit()
        self.record.compared += 1
        if not self.rule.check(result, j, position, self.seq[position], self.key):
            return self._reject(position, self.rule.replacement(result, j, position, self.key))
        self.record.accepted += 1
        self._commit()

    def _commit(self) -> None:
        token = self.seq[self.n_committed]
        self.n_committed += 1
        self.rule.forget(min(self.n_committed, self.blocks[0].start) if self.blocks else self.n_committed)
        self.record.commit_times.append(self._now())
        if self.n_committed >= self.end or token in self.eos_ids:
            self.done = True

    def _reject(self, position: int, token: int) -> None:
        self.deferred = None
        del self.seq[position:]
        self.seq.append(token)
        self.record.rejections += 1
        self._event(Event.REJECT, self._now(), self._now(), value=position)
        self.epoch += 1
        self._commit()
        self._cancel_all()
        if self.policy == "dsi" and self.nonsi_thread and self.capacity > 1 and not self.done:
            # The target goes on at once (the paper's non-SI thread). With one verifier it would hold up the
            # next real block instead, so it needs a spare verifier.
            self.blocks.append(Block(self.n_committed, []))
        self._choose_lookahead()

    def _restart(self) -> None:
        """Drop all speculation and go on from the committed text (a safe fallback, never a shortcut)."""
        del self.seq[self.n_committed :]
        self.deferred = None
        self.epoch += 1
        self._cancel_all()
        self._choose_lookahead()

    def _cancel_all(self, after_rejection: bool = True) -> None:
        """Drop every block; queued ones are never sent, in-flight ones are told to stop."""
        now = self._now()
        for block in self.blocks:
            if block.task_id is None:
                self.record.blocks_unsent += 1
            elif block.result is not None:  # arrived early, now useless
                self.rows[block.task_id]["outcome"] = Outcome.STALE_RESULT
                self.record.tasks_used -= 1
                self.record.tasks_stale += 1
        self.blocks.clear()
        told = set()  # one CANCEL per verifier, to each of its stages
        for task in self.inflight.values():
            still_useful = task.block is None and after_rejection  # a prefill of the unchanged prompt
            if task.epoch < self.epoch and task.task_id not in self.pending_cancels and not still_useful:
                if task.verifier not in told:
                    told.add(task.verifier)
                    for rank in self.slots.ranks(task.verifier):
                        self.channel.send(rank, protocol.CANCEL, epoch=self.epoch)
                self._event(Event.CANCEL_SENT, now, now, task.task_id, task.verifier)
                if after_rejection:
                    self.pending_cancels[task.task_id] = [task.task_id, task.verifier, now, np.nan, np.nan, np.nan, 0]

    def _finish(self) -> None:
        """Stop the clock, cancel what is still running and wait for every reply, so the next run starts
        with idle verifiers and a known cache state."""
        record = self.record
        record.wall_s = record.commit_times[-1] if record.commit_times else self._now()
        record.ttft_s = record.commit_times[0] if record.commit_times else float("nan")
        record.tokens = [int(t) for t in self.seq[self.n_prompt : self.n_committed]]
        self.epoch += 1
        self._cancel_all(after_rejection=False)

        def drained():
            while self.inflight and self._handle_one_message():
                pass
            return None if self.inflight else True

        self.channel.poller.wait_for(drained, self._waiting_for())
        record.tasks = [tuple(row[name] for name in TASK_DTYPE.names) for row in self.rows.values()]
