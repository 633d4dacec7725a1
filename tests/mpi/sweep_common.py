"""What the lossless sweeps (lossless_sweep.py, families_sweep.py) share: the channel, the reference
output of Hugging Face's own greedy `generate`, and one JSON row per (drafter, lookahead, policy, prompt) run
through the real coordinator and verifiers."""

import os

import torch
from mpi4py import MPI

from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.io.records import Outcome, RunRecord
from dsi_mpi.mpi.channel import Channel
from dsi_mpi.mpi.polling import BackoffPoller


def channel() -> Channel:
    return Channel(MPI.COMM_WORLD, BackoffPoller(timeout_s=float(os.environ.get("SWEEP_TIMEOUT", 120))))


def reference(model, prompt: list[int], new_tokens: int) -> list[int]:
    """The target's own greedy continuation."""
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens)
    return out[0, len(prompt) :].tolist()


def sweep_rows(decoder, prompts, refs, lookaheads, policies, new_tokens: int, **labels) -> list[dict]:
    """Every (lookahead, policy, prompt) with the decoder's current drafter; `labels` go into each row."""
    rows = []
    for k in lookaheads:
        for policy in policies:
            for i, prompt in enumerate(prompts):
                rec = decoder.generate(policy, prompt, RunRecord(policy, i, str(i)), RunSettings(new_tokens, k))
                rows.append(
                    labels
                    | {
                        "k": k,
                        "policy": policy,
                        "prompt": i,
                        "tokens": rec.tokens,
                        "ref": refs[i],
                        "ok": rec.tokens == refs[i],
                        "rejections": rec.rejections,
                        "stale": rec.tasks_stale,
                        "aborted": int((rec.task_table()["outcome"] == Outcome.ABANDONED).sum()),
                        "accepted": rec.accepted,
                        "compared": rec.compared,
                        "restarts": rec.restarts,
                        "unsent": rec.blocks_unsent,
                        "misses": rec.draft_misses,
                    }
                )
    return rows
