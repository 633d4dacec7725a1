"""Plain decoding (nonsi) on a pipelined verifier group, for jobs whose verifiers are all groups.

One task of no drafts per token, each sent when the last one's token is known: there is nothing to
overlap, so every token pays all the stages and the hops between them, which is what plain decoding on
such a target costs. Tokens are chosen as on a plain rank (greedy argmax; sampling: the draw from p
keyed by position: the rule's `bonus`, which is `Sampling.next_token`'s draw), so nonsi's output does not
depend on the layout. The tasks are numbered and sent in the coordinator's TaskLedger (its epoch), whose picture
of the group's caches is reset afterwards.
"""

from __future__ import annotations

import time

from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.decoding.tasks import TaskLedger
from dsi_mpi.io.records import RunRecord
from dsi_mpi.mpi import protocol


def nonsi_on_group(
    ledger: TaskLedger, rule, eos_ids, verifier: int, prompt: list[int], record: RunRecord, run: RunSettings
) -> RunRecord:
    """nonsi through the pipelined group `verifier` of `ledger` (the coordinator's), tokens chosen by `rule`."""
    channel, ranks = ledger.channel, ledger.slots.ranks(verifier)
    eos = frozenset(eos_ids) if run.stop_at_eos else frozenset()
    seq, base, t0 = list(prompt), 0, time.perf_counter()
    while len(record.tokens) < run.max_new_tokens:
        task_id = ledger.new_task_id()
        fields = dict(
            task_id=task_id, epoch=ledger.epoch, base=base, n_out=1, key=run.key, n_extras=0, plain=0, stream=0
        )
        channel.send(ranks[0], protocol.TASK, seq[base:], **fields)
        source, msg = channel.receive(f"nonsi results from rank {ranks[-1]}", source=ranks[-1], tag=protocol.RESULT)
        if msg.task_id != task_id:
            raise protocol.ProtocolError(f"rank {source} replied for task {msg.task_id}, expected {task_id}")
        verdict = msg.payload[: len(msg.payload) - protocol.STAGE_RECORD * msg.n_stages]
        token = rule.bonus(verdict, 0, len(seq), run.key)
        base = len(seq)
        seq.append(token)
        record.tokens.append(token)
        record.commit_times.append(time.perf_counter() - t0)
        if token in eos:
            break
    ledger.slots.forget()
    record.wall_s = record.commit_times[-1] if record.commit_times else time.perf_counter() - t0
    record.ttft_s = record.commit_times[0] if record.commit_times else float("nan")
    return record
