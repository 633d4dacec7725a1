"""Plain decoding (nonsi) on a pipelined verifier group, for jobs whose verifiers are all groups.

One task of no drafts per token, each sent when the last one's token is known: there is nothing to
overlap, so every token pays all the stages and the hops between them, which is what plain decoding on
such a target costs. Tokens are chosen as on a plain rank (greedy argmax; sampling: the draw from p
keyed by position, `Sampling.fresh` = `Sampling.next_token`), so nonsi's output does not depend on the
layout. The tasks use the decoder's ids and epoch, and the group's cache picture is reset afterwards.
"""

from __future__ import annotations

import time

from dsi_mpi.io.records import RunRecord
from dsi_mpi.mpi import protocol


def nonsi_on_group(decoder, verifier: int, prompt: list[int], record: RunRecord, run) -> RunRecord:
    channel, ranks, rule = decoder.channel, decoder.slots.ranks(verifier), decoder.rule
    eos = decoder.all_eos_ids if run.stop_at_eos else frozenset()
    seq, base, t0 = list(prompt), 0, time.perf_counter()
    while len(record.tokens) < run.max_new_tokens:
        task_id = decoder.next_task_id
        decoder.next_task_id += 1
        fields = dict(task_id=task_id, epoch=decoder.epoch, base=base, n_out=1, key=run.key, n_extras=0, plain=0)
        channel.send(ranks[0], protocol.TASK, seq[base:], **fields)
        source, msg = channel.receive(f"nonsi results from rank {ranks[-1]}", source=ranks[-1], tag=protocol.RESULT)
        if msg.task_id != task_id:
            raise protocol.ProtocolError(f"rank {source} replied for task {msg.task_id}, expected {task_id}")
        verdict = msg.payload[: len(msg.payload) - protocol.STAGE_RECORD * msg.n_stages]
        token = rule.fresh(verdict, 0, len(seq), run.key)
        base = len(seq)
        seq.append(token)
        record.tokens.append(token)
        record.commit_times.append(time.perf_counter() - t0)
        if token in eos:
            break
    decoder.slots.forget()
    record.wall_s = record.commit_times[-1] if record.commit_times else time.perf_counter() - t0
    record.ttft_s = record.commit_times[0] if record.commit_times else float("nan")
    return record
