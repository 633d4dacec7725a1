"""Pipeline sweep: si, dsi and nonsi on pipelined verifier groups (and groups mixed with a plain verifier).

usage: mpiexec -n N python tests/mpi/pipeline_sweep.py MODELS.json OUT.json PHASES MODE [LOOKAHEADS] [NEW_TOKENS]

PHASES (JSON): a list of phases, each a list of decoder layouts, each a list of verifiers (a list of
ranks: one rank holds the whole target, several form a group, each holding its own contiguous range of
the target's layers and loading only those). In each phase every rank serves the one verifier it belongs
to, until rank 0 stops them all and the next phase regroups the ranks (one launch, several layouts). MODE "greedy": rank 0 computes
the reference with Hugging Face's `generate(do_sample=False)`; "sampling": every rank uses the sampling
rule with one seed (the reference is the same algorithm on a plain rank, which tests/mpi/test_sampling.py
checks against the target's distribution). One JSON row per (layout, drafter, k, policy, prompt).
"""

import json
import sys
import traceback

import numpy as np
import torch
from lossless_sweep import PROMPTS, load
from mpi4py import MPI

from dsi_mpi.backends.hf import HFRunner
from dsi_mpi.backends.stage import HFStageRunner, build_stage_model
from dsi_mpi.decoding.acceptance import Greedy, Sampling
from dsi_mpi.decoding.baselines import run_baseline
from dsi_mpi.decoding.coordinator import SpeculativeDecoder
from dsi_mpi.decoding.group_baseline import nonsi_on_group
from dsi_mpi.decoding.pipeline import Stage
from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.decoding.verifier import Verifier, stop_verifiers
from dsi_mpi.io.records import Outcome, RunRecord
from dsi_mpi.mpi import protocol
from dsi_mpi.mpi.channel import Channel
from dsi_mpi.mpi.polling import BackoffPoller


def serve(channel, models, layouts, rule):
    rank = channel.rank
    group = next(tuple(g) for layout in layouts for g in layout if rank in g)
    if len(group) == 1:
        model = load(models["target"])
        return Verifier(channel, HFRunner(model, (model.generation_config.eos_token_id,)), rule=rule).serve()
    index = group.index(rank)
    model, layers = build_stage_model(models["target"], torch.float32, len(group), index)
    runner = HFStageRunner(model, index == 0, index == len(group) - 1, layers)
    Stage(channel, runner, group, index, rule).serve()


def mid_pipeline_cancels(rec) -> int:
    """Abandoned tasks that a later stage stopped or dropped after the first stage had computed them."""
    stages = rec.stage_table()
    count = 0
    for task_id in np.unique(stages["task_id"]):
        rows = np.sort(stages[stages["task_id"] == task_id], order="stage")
        if rows[0]["status"] == protocol.STAGE_COMPUTED and (rows[1:]["status"] != protocol.STAGE_COMPUTED).any():
            count += 1
    return count


def main():
    torch.set_num_threads(1)
    models, out_path = json.load(open(sys.argv[1])), sys.argv[2]
    phases, mode = json.loads(sys.argv[3]), sys.argv[4]
    lookaheads = json.loads(sys.argv[5]) if len(sys.argv) > 5 else [1, 3]
    new_tokens = int(sys.argv[6]) if len(sys.argv) > 6 else 24
    rule = Greedy() if mode == "greedy" else Sampling(seed=7, temperature=1.0)
    comm = MPI.COMM_WORLD
    channel = Channel(comm, BackoffPoller(timeout_s=120))
    if comm.Get_rank() != 0:
        try:
            for layouts in phases:
                serve(channel, models, layouts, rule)
        except BaseException:  # a failing rank takes the launch down at once (a test must fail, not hang)
            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)
        return
    target = load(models["target"])
    eos = target.generation_config.eos_token_id
    refs = [None] * len(PROMPTS)
    if mode == "greedy":
        with torch.inference_mode():
            refs = [
                target.generate(
                    torch.tensor([p]),
                    attention_mask=torch.ones(1, len(p), dtype=torch.long),
                    do_sample=False,
                    max_new_tokens=new_tokens,
                )[0, len(p) :].tolist()
                for p in PROMPTS
            ]
    rows = []
    try:
        for phase, layouts in enumerate(phases):
            rows += run_phase(channel, models, layouts, rule, eos, refs, lookaheads, new_tokens, phase)
    finally:
        json.dump(rows, open(out_path, "w"))


def run_phase(channel, models, layouts, rule, eos, refs, lookaheads, new_tokens, phase) -> list[dict]:
    rows = []
    try:
        decoders = [
            SpeculativeDecoder(channel, None, [tuple(g) for g in layout], eos_ids=(eos,), rule=rule)
            for layout in layouts
        ]
        for n, decoder in enumerate(decoders):
            share_epoch(decoder, decoders)
            first = decoder.verifiers[0]
            for i, prompt in enumerate(PROMPTS):
                run = RunSettings(new_tokens, key=i)
                rec = RunRecord("nonsi", i, str(i))
                if len(decoder.ledger.slots.ranks(first)) > 1:
                    nonsi_on_group(decoder.ledger, rule, (eos,), first, prompt, rec, run)
                else:
                    run_baseline(channel, first, "nonsi", prompt, rec, run)
                rows.append(
                    {
                        "phase": phase,
                        "layout": n,
                        "drafter": "-",
                        "k": 0,
                        "policy": "nonsi",
                        "prompt": i,
                        "tokens": rec.tokens,
                        "ref": refs[i],
                    }
                )
        for name in [n for n in models if n != "target"]:
            drafter = HFRunner(load(models[name]))
            for n, decoder in enumerate(decoders):
                decoder.drafter = drafter
                share_epoch(decoder, decoders)
                for k in lookaheads:
                    for policy in ("si", "dsi"):
                        for i, prompt in enumerate(PROMPTS):
                            rec = decoder.generate(
                                policy, prompt, RunRecord(policy, i, str(i)), RunSettings(new_tokens, k, key=i)
                            )
                            rows.append(
                                {
                                    "phase": phase,
                                    "layout": n,
                                    "drafter": name,
                                    "k": k,
                                    "policy": policy,
                                    "prompt": i,
                                    "tokens": rec.tokens,
                                    "ref": refs[i],
                                    "rejections": rec.rejections,
                                    "stale": rec.tasks_stale,
                                    "aborted": int((rec.task_table()["outcome"] == Outcome.ABANDONED).sum()),
                                    "mid_pipeline": mid_pipeline_cancels(rec),
                                    "stage_rows": len(rec.stages),
                                    "max_in_flight": max_in_flight(rec),
                                }
                            )
    finally:
        stop_verifiers(channel)
    return rows


def share_epoch(decoder, decoders) -> None:
    """Decoders taking turns on the same ranks: the verifiers have seen every decoder's CANCELs, so the next
    one goes on from the highest epoch, and assumes nothing about their caches."""
    decoder.ledger.epoch = max(d.ledger.epoch for d in decoders)
    decoder.ledger.slots.forget()


def max_in_flight(rec) -> int:
    """Most tasks of one group whose stages ran at the same instant (different tasks on different stages)."""
    stages = rec.stage_table()
    computed = stages[stages["status"] == protocol.STAGE_COMPUTED]
    best = 0
    for row in computed:
        t = row["start_s"] + 1e-9
        overlapping = computed[(computed["start_s"] <= t) & (computed["end_s"] > t)]
        best = max(best, len(np.unique(overlapping["task_id"])))
    return best


if __name__ == "__main__":
    main()
