"""Judging verification results: which drafts stand, and which token the target puts where they stop.

Results are applied strictly in position order, whatever order they arrive in (`apply_ready`). In each
block the drafts are compared with the target's verdict by the acceptance rule (decoding/acceptance.py):
the drafts that stand are *accepted* and committed; at the first that does not, the target's *recovered*
token replaces it (a rejection: the decoder drops all speculation after it); after a fully accepted block
the target's *bonus* token judges the next block's first draft at once (the paper's immediate pruning),
or, with nothing drafted there yet, is committed itself. Under sampling in dsi, a bonus position whose draft
is still being made waits for it (`deferred`, `settle`), so that tokens do not depend on timing.

Everything here changes only the prompt's state; what the verifiers must be told (stop stale work) is the
decoder's `retract`, called once the text has lost its speculation.
"""

from __future__ import annotations

from collections.abc import Callable

from dsi_mpi.decoding.prompt_state import Deferred, PromptState
from dsi_mpi.decoding.tasks import Block
from dsi_mpi.io.records import Event


class Judge:
    """Applies one prompt's verification results to its text (see the module docstring)."""

    def __init__(self, state: PromptState, rule, epoch: Callable[[], int], retract: Callable[[], None]):
        self.p, self.rule = state, rule
        self.epoch = epoch  # the decoder's epoch, for `drafter_has_nothing`
        self.retract = retract  # drop all speculation (the decoder's side of it)

    def apply_ready(self) -> None:
        """Apply every block whose result is in, in position order, until one is missing."""
        p = self.p
        while p.blocks and p.blocks[0].result is not None and not p.done:
            self.apply_counted(p.blocks.popleft())

    def apply_counted(self, block: Block) -> None:
        """Apply one block, telling adaptive speculation, and add to its task's row how many drafts stood (a
        stream's task applies one block per token)."""
        accepted, row = self.p.record.accepted, self.p.rows[block.task_id]
        self.observed(lambda: self.apply(block))
        row["accepted"] = max(row["accepted"], 0) + self.p.record.accepted - accepted

    def observed(self, judge: Callable[[], None]) -> None:
        """Run `judge` and tell adaptive speculation how many drafts it compared and accepted."""
        record = self.p.record
        accepted, compared = record.accepted, record.compared
        judge()
        if self.p.adaptive is not None:
            self.p.adaptive.observe_acceptance(record.accepted - accepted, record.compared - compared)

    def apply(self, block: Block) -> None:
        """Commit the drafts that stand; where they stop, the target's token: recovered for a draft that does
        not stand (a rejection), or, after the whole block, a bonus that judges the next draft (immediate
        pruning) or is committed itself if nothing is drafted there yet."""
        p, rule, result = self.p, self.rule, block.result
        if block.plain:
            return self._apply_plain_run(block)
        offset = p.n_committed - block.start
        assert 0 <= offset <= len(block.drafts), "blocks applied out of order"
        j = rule.stop(result, block.drafts, offset)
        if j < offset:  # the verifier judged a committed draft differently (floating point): verify again
            return self.restart()
        for _ in range(offset, j):
            p.record.compared += 1
            p.record.accepted += 1
            self.commit()
            if p.done:
                return
        position = block.start + j
        if j < len(block.drafts):
            p.record.compared += 1
            return self.reject(position, rule.recovered(result, j, position, p.key))
        if position < len(p.seq):  # the next position is drafted: prune at once
            return self._judge_draft(result, j, position)
        if rule.sampled and p.policy == "dsi" and p.k > 0 and not p.drafter_has_nothing(self.epoch()):
            # Whether the drafter got here first depends on timing; so that tokens do not, the position
            # waits for its draft and is judged like any other (see settle).
            p.deferred = Deferred(result, j, position)
            return
        p.seq.append(rule.bonus(result, j, position, p.key))
        self.commit()

    def _apply_plain_run(self, block: Block) -> None:
        """The target's own tokens, decoded on the verifier (nothing is drafted at k = 0)."""
        p = self.p
        assert block.start == p.n_committed, "a plain run applied out of order"
        del p.seq[p.n_committed :]
        for token in block.result:
            p.seq.append(int(token))
            self.commit()
            if p.done:
                return

    def _judge_draft(self, verdict, j: int, position: int) -> None:
        """The bonus at `position` judges the draft there: it stands, or the recovered token replaces it."""
        p = self.p
        p.record.compared += 1
        if not self.rule.check(verdict, j, position, p.seq[position], p.key):
            return self.reject(position, self.rule.recovered(verdict, j, position, p.key))
        p.record.accepted += 1
        self.commit()

    def settle(self) -> None:
        """Judge the draft that has just arrived at a deferred position (none: the drafter had nothing to
        propose there, which depends on the text only, so the target's own draw stands, as without drafts)."""
        p = self.p
        deferred, p.deferred = p.deferred, None
        if len(p.seq) == deferred.position:
            p.seq.append(self.rule.bonus(deferred.verdict, deferred.j, deferred.position, p.key))
            return self.commit()
        self._judge_draft(deferred.verdict, deferred.j, deferred.position)

    def commit(self) -> None:
        p = self.p
        token = p.seq[p.n_committed]
        p.n_committed += 1
        self.rule.forget(min(p.n_committed, p.blocks[0].start) if p.blocks else p.n_committed)
        p.record.commit_times.append(p.now())
        if p.n_committed >= p.end or token in p.eos_ids:
            p.done = True

    def reject(self, position: int, token: int) -> None:
        """The recovered token replaces the draft at `position`; everything after it goes."""
        p = self.p
        p.deferred = None
        del p.seq[position:]
        p.seq.append(token)
        p.event(Event.REJECT, p.now(), p.now(), value=position)  # the record counts its rejections from these
        self.commit()
        self.retract()

    def restart(self) -> None:
        """Drop all speculation and go on from the committed text (a safe fallback, never a shortcut)."""
        p = self.p
        p.record.restarts += 1
        del p.seq[p.n_committed :]
        p.deferred = None
        self.retract()
