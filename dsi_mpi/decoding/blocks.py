"""Cutting the drafts into blocks: k drafts each, fewer when no more will come, none when the target should
just decode; and, in dsi, cutting unsent blocks again after a bonus token committed the first draft of one.
What goes out and to whom is the coordinator's `_dispatch`.
"""

from __future__ import annotations

from collections.abc import Callable

from dsi_mpi.decoding.prompt_state import PromptState
from dsi_mpi.decoding.tasks import Block


class BlockCutter:
    """One prompt's blocks (PromptState.blocks); k is chosen afresh after each block formed (`choose_lookahead`,
    the coordinator's), and `epoch` is the coordinator's, for what the drafter has nothing to propose for."""

    def __init__(self, state: PromptState, epoch: Callable[[], int], choose_lookahead: Callable[[], None]):
        self.p, self.epoch, self.choose_lookahead = state, epoch, choose_lookahead

    def form(self) -> None:
        """Cut the drafts into blocks of k; a shorter last block when no more drafts will come (the end of
        the generation, a drafter with nothing to propose, or k = 0 with drafts left from before), and when
        nothing is drafted and nothing is awaited, a block of no drafts: the target just produces its next
        token, as in plain decoding. Adaptive k is chosen afresh for the block after each one formed."""
        p = self.p
        start = p.next_block_start()
        while True:
            no_more = len(p.seq) >= p.end or p.drafter_has_nothing(self.epoch()) or p.k == 0
            available = len(p.seq) - start
            if (p.k and available >= p.k) or (available > 0 and no_more):
                n = min(p.k or available, available)
                p.blocks.append(Block(start, p.seq[start : start + n]))
                start += n
            elif no_more and not p.blocks and p.n_committed < p.end:
                plain = p.adaptive.plain_run(p.end - start) if self._plain_runs() else 0
                p.blocks.append(Block(start, [], plain=plain))
            else:
                return
            self.choose_lookahead()

    def recut_unsent(self) -> None:
        """Immediate pruning commits the first draft of the next block; sent as it is, that block would
        verify k - 1 drafts in a forward of k tokens, and with one verifier every block would (measured in
        the simulator at a 0.8, k 1: dsi 0.83x si). So unsent blocks that start before the committed text
        are cut again from it, from the drafts already made (up to k each). Never waiting for more: with no
        draft past the committed text the block goes as it was (it still yields the target's next token).
        si is left as it was, the blocking loop whose expected latency simulator.si_expected_latency gives,
        and so is dsi with one block ahead, which is that loop."""
        p = self.p
        if p.policy != "dsi" or p.max_ahead < 2:
            return
        if not any(b.task_id is None and b.drafts and b.start < p.n_committed for b in p.blocks):
            return
        unsent = []  # unsent blocks are a suffix: dispatch sends in order
        while p.blocks and p.blocks[-1].task_id is None and p.blocks[-1].drafts:
            unsent.append(p.blocks.pop())
        start = p.next_block_start()
        if len(p.seq) <= start:
            p.blocks.extend(reversed(unsent))
            return
        self.form()
        last = p.blocks[-1] if p.blocks else None
        if last is None or last.task_id is not None:  # fewer than k drafts: send those, do not wait
            p.blocks.append(Block(start, p.seq[start : start + (p.k or len(p.seq))]))

    def _plain_runs(self) -> bool:
        """At adaptive k = 0 a block of no drafts asks a plain verifier rank to decode a run of tokens itself
        (a pipelined group's stages decode one token per task: the stage loop knows no runs)."""
        p = self.p
        return p.k == 0 and p.adaptive is not None and p.capacity == len(p.active)
