"""Soak test (outside CI): many prompts, random rank faults, resume until done; nothing lost or corrupted.

usage: python -m analysis.soak [--prompts 60] [--ranks 4] [--rounds 40] [--seed 0] [--out results/soak.h5]

LATENCY EMULATION runs (`[models] kind = "emulated"`, so outputs are known exactly) of nonsi, si and dsi.
Each round injects one random FAULT (DSI_MPI_FAULT: a random rank raises, runs out of memory, is killed
or hangs after a random number of ticks) and resumes the same results file. After every round the file
must open, every prompt marked complete must hold all three algorithms with exactly the emulated
target's tokens, and no prompt complete before the round may have changed. Prints what happened.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

from analysis.jobs import ROOT, emulated_prompts, job_command, job_env

ALGORITHMS = ("nonsi", "si", "dsi")
TOKENS, PROMPT_TOKENS, SEED = 24, 8, 5


def run(args, prompts: Path, fault: str | None) -> int:
    settings = {
        "models.kind": '"emulated"',
        "decoding.algorithms": json.dumps(list(ALGORITHMS)),
        "decoding.max_new_tokens": TOKENS,
        "decoding.warmup_prompts": 0,
        "decoding.seed": SEED,
        "decoding.lookahead": 3,
        "prompts.path": json.dumps(str(prompts)),
        "output.path": json.dumps(args.out),
        "output.overwrite": "false",
        "output.resume": "true",
        "runtime.timeout_s": 3.0,
        "emulation.target_tpot_s": 0.002,
        "emulation.target_ttft_s": 0.003,
        "emulation.drafter_tpot_s": 0.0005,
        "emulation.drafter_ttft_s": 0.001,
        "emulation.acceptance": 0.7,
        "emulation.prompt_tokens": PROMPT_TOKENS,
    }
    command = job_command(args.ranks, ROOT / "inputs/configs/default.toml", settings)
    env = job_env(fault)
    return subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300
    ).returncode


def snapshot(path: str) -> dict:
    """{prompt index: {algorithm: tokens}} of the complete prompts, checked against the emulated truth."""
    from dsi_mpi.backends.emulated import emulated_target_token
    from dsi_mpi.io.results import is_complete

    deadline = time.monotonic() + 10
    while True:
        try:
            f = h5py.File(path, "r")
            break
        except BlockingIOError:  # a killed rank may hold the lock for a moment
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    done = {}
    with f:
        for name, group in f["prompts"].items():
            if not is_complete(group):
                continue
            n = len(group["prompt_tokens"])
            truth = [emulated_target_token(SEED, n + i, 1000) for i in range(TOKENS)]
            runs = {a: group[a]["tokens"][()].tolist() for a in ALGORITHMS if a in group}
            if set(runs) != set(ALGORITHMS) or any(t != truth for t in runs.values()):
                raise AssertionError(f"prompt {name} is marked complete but its records are wrong: {runs}")
            done[int(name)] = runs
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/soak.h5")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).unlink(missing_ok=True)
    faults, failures, start = {}, 0, time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        prompts = emulated_prompts(Path(tmp) / "prompts.jsonl", args.prompts, "s")
        before: dict = {}
        for round_ in range(args.rounds):
            kind = rng.choice(["raise", "oom", "kill", "hang"])
            rank = rng.randrange(args.ranks)
            after = rng.randint(1, 6) if rank == 0 else rng.randint(5, 120)
            fault = f"rank={rank},after={after},kind={kind}"
            code = run(args, prompts, fault)
            after_round = snapshot(args.out) if Path(args.out).exists() else {}
            lost = [i for i in before if after_round.get(i) != before[i]]
            if lost:
                raise AssertionError(f"round {round_}: prompts {lost} complete before the fault changed or vanished")
            faults[kind] = faults.get(kind, 0) + 1
            failures += code != 0
            print(
                f"round {round_:2d}: {fault:<28} exit {code:3d}  complete {len(after_round)}/{args.prompts}", flush=True
            )
            before = after_round
            if len(before) == args.prompts:
                break
        code = run(args, prompts, None)  # finish whatever is left, with no fault
        final = snapshot(args.out)
    print(
        f"soak: {round_ + 1} faulty rounds ({failures} ended by their fault; kinds {faults}), final run exit "
        f"{code}; {len(final)}/{args.prompts} prompts complete and exact, none lost or changed; "
        f"{time.monotonic() - start:.0f} s"
    )
    return 0 if code == 0 and len(final) == args.prompts else 1


if __name__ == "__main__":
    sys.exit(main())
