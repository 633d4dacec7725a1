"""Lossless sweep: SI and DSI against Hugging Face's own greedy `generate`, many drafters and lookaheads.

usage: mpiexec -n N python tests/mpi/lossless_sweep.py SWEEP.json OUT.json

SWEEP.json: {"target": folder, "groups": [{"name", "drafters": {name: folder or spec}, "lookaheads": [k, ...],
"policies": ["si", "dsi"], "new_tokens": N}, ...], "prompts": [[token id, ...], ...] (optional), "runner": "hf" or
"packed"}; "packed" runs the target and the model drafters on the packed CPU backend where it can run them
(dsi_mpi/backends/packed.py), HFRunner elsewhere. A drafter is a model folder (of the target's vocabulary or
another: then drafting through token-level intersection, dsi_mpi/backends/tli.py), or a drafter spec that needs
no folder of its own ("ngram:n=N", "truncated:layers=L", as models.drafter takes them). Rank 0 computes the
references with `generate(do_sample=False)`, then runs every group's (drafter, lookahead, policy, prompt)
through the real coordinator and verifier code and writes one JSON row per run, all in one launch.
"""

import json
import sys

import torch
from mpi4py import MPI
from sweep_common import channel, reference, sweep_rows
from transformers import AutoModelForCausalLM

from dsi_mpi.backends.checks import vocabulary_map
from dsi_mpi.backends.hf import HFRunner
from dsi_mpi.backends.loading import restrict_drafter_head, truncate_layers
from dsi_mpi.backends.ngram import NGramDrafter
from dsi_mpi.backends.packed import PackedRunner, packable
from dsi_mpi.backends.tli import TLIDrafter
from dsi_mpi.decoding.coordinator import SpeculativeDecoder
from dsi_mpi.decoding.verifier import Verifier, stop_verifiers
from dsi_mpi.io.drafter_spec import parse_drafter

PROMPTS = [[10, 20, 30, 40, 50], [200, 7, 7, 7, 100, 33, 65, 66, 67, 68, 69, 70], [42]]


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def runner(model, kind: str, eos=()):
    return PackedRunner(model, eos) if kind == "packed" and packable(model) is None else HFRunner(model, eos)


def make_drafter(spec_text, target_folder, vocab_size, kind: str):
    spec = parse_drafter(spec_text)
    if spec.kind == "ngram":
        return NGramDrafter(spec.params["n"], vocab_size)
    if spec.kind == "truncated":
        return runner(truncate_layers(load(target_folder), spec.params["layers"]), kind)
    model = load(spec.model)
    restrict_drafter_head(model, spec.model)  # a folder with draft_vocab.json drafts from those tokens only
    vocab_map = vocabulary_map(target_folder, spec.model)  # None: the target's own vocabulary
    return runner(model, kind) if vocab_map is None else TLIDrafter(runner(model, kind), vocab_map)


def main():
    torch.set_num_threads(1)
    job = json.load(open(sys.argv[1]))
    out_path = sys.argv[2]
    comm, chan = MPI.COMM_WORLD, channel()
    target = load(job["target"])
    eos = target.generation_config.eos_token_id
    kind = job.get("runner", "hf")
    if comm.Get_rank() != 0:
        Verifier(chan, runner(target, kind, (eos,))).serve()
        return
    rows = []
    try:
        decoder = SpeculativeDecoder(chan, None, list(range(1, comm.Get_size())), eos_ids=(eos,))
        prompts = job.get("prompts", PROMPTS)
        for group in job["groups"]:
            n = group["new_tokens"]
            refs = [reference(target, p, n) for p in prompts]
            for name, spec in group["drafters"].items():
                decoder.drafter = make_drafter(spec, job["target"], target.config.vocab_size, kind)
                labels = {"group": group["name"], "drafter": name}
                rows += sweep_rows(decoder, prompts, refs, group["lookaheads"], group["policies"], n, **labels)
    finally:
        stop_verifiers(chan)
        json.dump(rows, open(out_path, "w"))


if __name__ == "__main__":
    main()
