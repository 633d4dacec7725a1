"""What one verification costs against the tokens it carries: T(n) / T(1) for a model on this machine.

usage: python analysis/forward_cost.py [--model inputs/models/smollm2-135m-instruct] [--context 40]
                                       [--tokens 1 2 3 4 5 8] [--rounds 12] [--threads 1]

The time model prices a block of k drafts at T(k + 1). On a GPU T(n) is nearly flat in n; on a CPU core
it is not, and adaptive speculation (dsi_mpi/decoding/adaptive.py) must measure it. This times the
project's own runner (dsi_mpi.backends.hf.HFRunner): a forward of n new tokens over a cache of --context
tokens, rolled back after each, the sizes interleaved round after round so that drift hits them alike.
Prints the median milliseconds and the ratio to one token, one line per n, then a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from dsi_mpi.backends.hf import HFRunner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="inputs/models/smollm2-135m-instruct")
    parser.add_argument("--context", type=int, default=40)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 3, 4, 5, 8])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runner = HFRunner(AutoModelForCausalLM.from_pretrained(args.model))
    runner.forward(list(range(100, 100 + args.context)), 1)
    seconds: dict[int, list[float]] = {n: [] for n in args.tokens}
    for _ in range(args.rounds + 2):  # the first two rounds warm up and are dropped
        for n in args.tokens:
            runner.crop(args.context)
            start = time.perf_counter()
            runner.forward(list(range(200, 200 + n)), n)
            seconds[n].append(time.perf_counter() - start)
    median = {n: statistics.median(v[2:]) for n, v in seconds.items()}
    base = median[args.tokens[0]]
    for n in args.tokens:
        print(f"{n} tokens: {1000 * median[n]:.1f} ms, {median[n] / base:.2f}x T({args.tokens[0]})")
    print(json.dumps({"model": args.model, "threads": args.threads, "ratio": {n: median[n] / base for n in median}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
