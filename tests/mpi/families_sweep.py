"""Every architecture family, lossless: SI and DSI against Hugging Face's own greedy `generate`, one job.

usage: mpiexec -n N python tests/mpi/families_sweep.py FAMILIES.json OUT.json [LOOKAHEADS] [NEW_TOKENS] [MODELS] [DRAFTERS]

FAMILIES.json maps each family to {"target": folder, "noisy": folder} (tests/tiny_families.py). Every rank
loads each family's target through the job's own loader (`build_runner`, so a refused architecture is the
one-line ConfigError a user would see, recorded here as the family's row); rank 0 computes the reference
with `generate(do_sample=False)` and runs (drafter, lookahead, policy, prompt) through the real coordinator
and verifiers, with two drafters: the family's perturbed copy and the next family's target (another
architecture). One JSON row per run, or one {"family", "error"} row per refused family. MODELS: JSON of
[models] keys for every runner (e.g. '{"backend": "compiled"}'); DRAFTERS: "noisy,other" (default) or one of them.
Each row also says which backend each role really ran ("compiled", or "eager" after a recorded fallback).
"""

import json
import sys
import time

import torch
from sweep_common import channel, reference, sweep_rows

from dsi_mpi.backends.loading import build_runner
from dsi_mpi.decoding.coordinator import SpeculativeDecoder
from dsi_mpi.decoding.verifier import Verifier, stop_verifiers
from dsi_mpi.io.config import ConfigError, validate

PROMPTS = [[200, 7, 7, 7, 100, 33, 65, 66, 67, 68, 69, 70], [10, 20, 30, 40, 50]]
MODELS: dict = {}  # [models] keys from the command line


def runner(role: str, folder: str, target: str | None = None):
    """The runner of `folder` as `role`; a drafter's config names its target too (a drafter is mapped to the
    target's vocabulary where the two differ: here they share the byte-level one)."""
    models = {"kind": "hf", "target": target or folder, "dtype": "float32", "device": "cpu", **MODELS}
    if role == "drafter":
        models["drafter"] = folder
    return build_runner(role, validate({"models": models}), longest_prompt=max(map(len, PROMPTS)))


def run_family(channel, family, folders, bad_folder, lookaheads, new_tokens, drafters=("noisy", "other")):
    """All ranks: this family's target on every verifier; on rank 0 the rows of its runs."""
    comm = channel.comm
    try:
        target, error = runner("target", folders["target"]), None
    except ConfigError as err:
        target, error = None, str(err)
    errors = comm.allgather(error)  # every rank skips a family that any rank refused
    backends = comm.allgather(getattr(target, "compile_info", {}).get("backend"))
    if any(errors):
        return [{"family": family, "error": next(e for e in errors if e)}]
    eos = target.eos_token_ids
    if comm.Get_rank() != 0:
        Verifier(channel, target).serve()
        return []
    rows = []
    try:
        refs = [reference(target.model, p, new_tokens) for p in PROMPTS]
        decoder = SpeculativeDecoder(channel, None, list(range(1, comm.Get_size())), eos_ids=eos)
        for drafter_name, folder in (("noisy", folders["noisy"]), ("other", bad_folder)):
            if drafter_name not in drafters:
                continue
            decoder.drafter = runner("drafter", folder, folders["target"])
            drafter_backend = getattr(decoder.drafter, "compile_info", {}).get("backend")
            labels = {"family": family, "drafter": drafter_name, "target_backends": backends[1:]}
            labels["drafter_backend"] = drafter_backend
            rows += sweep_rows(decoder, PROMPTS, refs, lookaheads, ("si", "dsi"), new_tokens, **labels)
    finally:
        stop_verifiers(channel)
    return rows


def main():
    torch.set_num_threads(1)
    families = json.load(open(sys.argv[1]))
    out_path = sys.argv[2]
    lookaheads = [int(k) for k in (sys.argv[3] if len(sys.argv) > 3 else "1,4").split(",")]
    new_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 24
    MODELS.update(json.loads(sys.argv[5]) if len(sys.argv) > 5 else {})
    drafters = tuple(sys.argv[6].split(",")) if len(sys.argv) > 6 else ("noisy", "other")
    chan = channel()
    comm = chan.comm
    names = list(families)
    rows = []
    try:
        for i, family in enumerate(names):
            bad = families[names[(i + 1) % len(names)]]["target"]
            start = time.perf_counter()
            rows += run_family(chan, family, families[family], bad, lookaheads, new_tokens, drafters)
            if comm.Get_rank() == 0:
                print(f"{family}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    finally:
        if comm.Get_rank() == 0:
            json.dump(rows, open(out_path, "w"))


if __name__ == "__main__":
    main()
