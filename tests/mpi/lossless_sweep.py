"""Lossless sweep: SI and DSI against Hugging Face's own greedy `generate`, many drafters and lookaheads.

usage: mpiexec -n N python tests/mpi/lossless_sweep.py MODELS.json OUT.json [MAX_LOOKAHEAD] [NEW_TOKENS]

MODELS.json maps "target" and drafter names to model folders, or to drafter specs that need no folder of their
own ("ngram:n=N", "truncated:layers=L", as models.drafter takes them). Rank 0 computes the reference with
`generate(do_sample=False)`, then runs every (drafter, lookahead, policy, prompt) through the real
coordinator and verifier code and writes one JSON row per run.
"""

import json
import sys

import torch
from mpi4py import MPI
from transformers import AutoModelForCausalLM

from dsi_mpi.backends.hf import HFRunner
from dsi_mpi.backends.loading import truncate_layers
from dsi_mpi.backends.ngram import NGramDrafter
from dsi_mpi.decoding.coordinator import SpeculativeDecoder
from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.decoding.verifier import Verifier, stop_verifiers
from dsi_mpi.io.drafter_spec import parse_drafter
from dsi_mpi.io.records import Outcome, RunRecord
from dsi_mpi.mpi.channel import Channel
from dsi_mpi.mpi.polling import BackoffPoller

PROMPTS = [[10, 20, 30, 40, 50], [200, 7, 7, 7, 100, 33, 65, 66, 67, 68, 69, 70], [42]]


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def make_drafter(spec_text, target_folder, vocab_size):
    spec = parse_drafter(spec_text)
    if spec.kind == "ngram":
        return NGramDrafter(spec.params["n"], vocab_size)
    if spec.kind == "truncated":
        return HFRunner(truncate_layers(load(target_folder), spec.params["layers"]))
    return HFRunner(load(spec.model))


def main():
    torch.set_num_threads(1)
    models = json.load(open(sys.argv[1]))
    out_path = sys.argv[2]
    max_k = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    new_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 24
    comm = MPI.COMM_WORLD
    channel = Channel(comm, BackoffPoller(timeout_s=float(__import__("os").environ.get("SWEEP_TIMEOUT", 120))))
    target = load(models["target"])
    eos = target.generation_config.eos_token_id
    if comm.Get_rank() != 0:
        Verifier(channel, HFRunner(target, (eos,))).serve()
        return
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
        decoder = SpeculativeDecoder(channel, None, list(range(1, comm.Get_size())), (eos,))
        for name in [n for n in models if n != "target"]:
            decoder.drafter = make_drafter(models[name], models["target"], target.config.vocab_size)
            for k in range(max_k + 1):  # 0: adaptive speculation
                for policy in ("si", "dsi"):
                    for i, prompt in enumerate(PROMPTS):
                        rec = decoder.generate(policy, prompt, RunRecord(policy, i, str(i)), RunSettings(new_tokens, k))
                        aborted = int((rec.task_table()["outcome"] == Outcome.ABANDONED).sum())
                        rows.append(
                            {
                                "drafter": name,
                                "k": k,
                                "policy": policy,
                                "prompt": i,
                                "tokens": rec.tokens,
                                "ref": refs[i],
                                "ok": rec.tokens == refs[i],
                                "rejections": rec.rejections,
                                "stale": rec.tasks_stale,
                                "aborted": aborted,
                                "accepted": rec.accepted,
                                "compared": rec.compared,
                                "unsent": rec.blocks_unsent,
                                "misses": rec.draft_misses,
                            }
                        )
    finally:
        stop_verifiers(channel)
        json.dump(rows, open(out_path, "w"))


if __name__ == "__main__":
    main()
