"""Sampling sweep: many short generations with nonsi, si and dsi, counted per outcome.

usage: mpiexec -n N python tests/mpi/sampling_sweep.py MODELS.json OUT.json SAMPLES NEW_TOKENS

Each generation uses another random-stream key (the "prompt index"), so the generations are independent
draws. Rank 0 writes {"<algorithm>/<drafter>/<setting>": {"<token ids>": count}} for the test to compare
with the target's exact distribution.
"""

import collections
import json
import sys

import torch
from mpi4py import MPI
from transformers import AutoModelForCausalLM

from dsi_mpi.backends.hf import HFRunner
from dsi_mpi.backends.ngram import NGramDrafter
from dsi_mpi.decoding.acceptance import Sampling
from dsi_mpi.decoding.baselines import run_baseline
from dsi_mpi.decoding.coordinator import SpeculativeDecoder
from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.decoding.verifier import Verifier, stop_verifiers
from dsi_mpi.io.records import RunRecord
from dsi_mpi.mpi.channel import Channel
from dsi_mpi.mpi.polling import BackoffPoller

PROMPT = [1, 2, 3]
SETTINGS = {"plain": dict(temperature=1.0, top_k=0, top_p=1.0), "warped": dict(temperature=0.7, top_k=4, top_p=0.9)}


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def main():
    torch.set_num_threads(1)
    models, out_path = json.load(open(sys.argv[1])), sys.argv[2]
    samples, new_tokens = int(sys.argv[3]), int(sys.argv[4])
    comm = MPI.COMM_WORLD
    channel = Channel(comm, BackoffPoller(timeout_s=120))
    setting = SETTINGS[models.get("setting", "plain")]
    rule = Sampling(seed=7, **setting)
    if comm.Get_rank() != 0:
        Verifier(channel, HFRunner(load(models["target"])), rule=rule).serve()
        return
    counts = {}
    try:
        plain = counts.setdefault(f"nonsi/-/{models.get('setting', 'plain')}", collections.Counter())
        for key in range(samples):
            rec = run_baseline(
                channel,
                1,
                "nonsi",
                PROMPT,
                RunRecord("nonsi", key, ""),
                RunSettings(new_tokens, stop_at_eos=False, key=key),
            )
            plain[json.dumps(rec.tokens)] += 1
        decoder = SpeculativeDecoder(channel, None, list(range(1, comm.Get_size())), (), False, rule=rule)
        for drafter in ("noisy", "bad", "ngram"):  # ngram: a point-mass q, and often no proposal at all
            decoder.drafter = NGramDrafter(1, 6) if drafter == "ngram" else HFRunner(load(models[drafter]))
            for policy, k in (("si", 2), ("dsi", 3), ("dsi", 0)):  # k 0: adaptive speculation
                c = counts.setdefault(
                    f"{policy}-k{k}/{drafter}/{models.get('setting', 'plain')}", collections.Counter()
                )
                for key in range(samples):
                    rec = decoder.generate(
                        policy,
                        PROMPT,
                        RunRecord(policy, key, ""),
                        RunSettings(new_tokens, k, stop_at_eos=False, key=key),
                    )
                    c[json.dumps(rec.tokens)] += 1
    finally:
        stop_verifiers(channel)
        json.dump(counts, open(out_path, "w"))


if __name__ == "__main__":
    main()
