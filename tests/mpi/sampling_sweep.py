"""Sampling sweep: many short generations with nonsi, si and dsi, counted per outcome.

usage: mpiexec -n N python tests/mpi/sampling_sweep.py MODELS.json OUT.json SAMPLES NEW_TOKENS

MODELS.json: {"target", "noisy", "noisy_head", "bad", "cross" (optional): folders, "settings": {name: {temperature, top_k, top_p}}}; every
setting runs in this one launch (the verifiers serve one setting's rule until STOP, then the next). Each
generation uses another random-stream key (the "prompt index"), so the generations are independent
draws. Rank 0 writes {"<algorithm>/<drafter>/<setting>": {"<token ids>": count}} for the test to compare
with the target's exact distribution.
"""

import collections
import json
import sys

import torch
from mpi4py import MPI
from transformers import AutoModelForCausalLM

from dsi_mpi.backends.checks import vocabulary_map
from dsi_mpi.backends.hf import HFRunner
from dsi_mpi.backends.loading import restrict_drafter_head
from dsi_mpi.backends.ngram import NGramDrafter
from dsi_mpi.backends.tli import TLIDrafter
from dsi_mpi.decoding.acceptance import Sampling
from dsi_mpi.decoding.baselines import run_baseline
from dsi_mpi.decoding.coordinator import SpeculativeDecoder
from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.decoding.verifier import Verifier, stop_verifiers
from dsi_mpi.io.records import RunRecord
from dsi_mpi.mpi.channel import Channel
from dsi_mpi.mpi.polling import BackoffPoller

PROMPT = [1, 2, 3]


# ngram: a point-mass q, and often no proposal at all; noisy_head: q zero outside the tokens its head keeps;
# cross: a drafter of another vocabulary (token-level intersection: q zero outside the shared tokens, target
# tokens it lacks re-encoded from text), present where MODELS.json names it
DRAFTERS = ("noisy", "noisy_head", "bad", "ngram", "cross")


def load(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    restrict_drafter_head(model, folder)  # draft_vocab.json, where the folder has one
    return model


def run_setting(channel, models, name, rule, samples, new_tokens, counts) -> None:
    """Rank 0: every (algorithm, drafter) of one setting, `samples` generations each, counted."""
    plain = counts.setdefault(f"nonsi/-/{name}", collections.Counter())
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
    decoder = SpeculativeDecoder(channel, None, list(range(1, channel.comm.Get_size())), rule=rule)
    for drafter in (d for d in DRAFTERS if d == "ngram" or d in models):
        decoder.drafter = NGramDrafter(1, 6) if drafter == "ngram" else HFRunner(load(models[drafter]))
        vocab_map = vocabulary_map(models["target"], models[drafter]) if drafter == "cross" else None
        if vocab_map is not None:
            decoder.drafter = TLIDrafter(decoder.drafter, vocab_map)
        for policy, k in (("si", 2), ("dsi", 3), ("dsi", 0)):  # k 0: adaptive speculation
            c = counts.setdefault(f"{policy}-k{k}/{drafter}/{name}", collections.Counter())
            for key in range(samples):
                run = RunSettings(new_tokens, k, stop_at_eos=False, key=key)
                c[json.dumps(decoder.generate(policy, PROMPT, RunRecord(policy, key, ""), run).tokens)] += 1


def main():
    torch.set_num_threads(1)
    models, out_path = json.load(open(sys.argv[1])), sys.argv[2]
    samples, new_tokens = int(sys.argv[3]), int(sys.argv[4])
    comm = MPI.COMM_WORLD
    channel = Channel(comm, BackoffPoller(timeout_s=120))
    target = HFRunner(load(models["target"])) if comm.Get_rank() != 0 else None
    counts = {}
    try:
        for name, setting in models["settings"].items():
            rule = Sampling(seed=7, **setting)
            if comm.Get_rank() != 0:
                Verifier(channel, target, rule=rule).serve()
                continue
            try:
                run_setting(channel, models, name, rule, samples, new_tokens, counts)
            finally:
                stop_verifiers(channel)
    finally:
        if comm.Get_rank() == 0:
            json.dump(counts, open(out_path, "w"))


if __name__ == "__main__":
    main()
