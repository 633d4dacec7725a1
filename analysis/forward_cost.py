"""The benchmark of record for what one verification costs: T(n), a forward of n new tokens over a KV cache, for
each backend and dtype, against the memory floor measured on the same core.

usage: python -m analysis.forward_cost [--model inputs/models/smollm2-135m-instruct] [--context 40]
                                       [--tokens 1 2 ... 9] [--rounds 8] [--threads 1]
                                       [--variants eager:float32 packed:float32 packed:bfloat16 packed:int8 packed:int4 ...]
                                       [--clock wall|cpu] [--json FILE]

The time model prices a block of k drafts at T(k + 1); speculation pays on a CPU only where T(n) hardly grows
with n. Each variant is built through the project's own loading path (`build_runner`, models.backend and
models.dtype as given), so the packed backend makes the same kernel choices it makes in a job. Rounds interleave
the variants and the sizes, so that drift on a shared machine hits them alike; the first two rounds are dropped.
--clock cpu times the process's CPU time instead of the wall clock: on a machine shared with other jobs it is
not inflated by the scheduler (memory-bandwidth contention still shows); the record says which clock.

The memory floor of a variant is the bytes of the matrices one forward multiplies (its `streamed_mb`: every
decoder matrix and the head, in the dtype the variant keeps them; the packed backend keeps the head in fp32, but
a quantized drafter's in int8 or int4 with their scales: variants packed:int8 and packed:int4, the model as
`models.drafter = "quantized:bits=8"` or `4`)
over this core's streaming read bandwidth, measured here (the best of a few whole-buffer reductions over a
buffer far larger than the caches). Prints the CPU model and its bf16/AMX flags, a Markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from dsi_mpi.backends.cpu import cpu_facts
from dsi_mpi.backends.loading import build_runner
from dsi_mpi.io.config import validate

BUFFER_BYTES = 1 << 30  # the bandwidth probe's buffer: far past any L3


def read_bandwidth(rounds: int = 5, clock=time.perf_counter) -> float:
    """Bytes per second one core streams from memory: the best of sum, max and dot over a 1 GiB buffer."""
    buffer = torch.ones(BUFFER_BYTES // 4)
    best = 0.0
    for _ in range(rounds):
        for reduce in (torch.sum, torch.amax, lambda a: torch.dot(a, a)):
            start = clock()
            reduce(buffer)
            best = max(best, BUFFER_BYTES / max(clock() - start, 1e-9))
    return best


def streamed_bytes(runner) -> int:
    """Bytes of the matrices one forward multiplies (decoder layers and head; not the embedding, of which a
    forward reads a few rows): on the packed backend's own kernels its packed weights and their scales as stored
    (`weights_bytes`), else the model's parameters (oneDNN's packed fp32 weights are the model's size)."""
    if getattr(runner, "weights_bytes", None) is not None:
        return runner.weights_bytes
    model = runner.model
    layers = sum(p.numel() * p.element_size() for p in model.base_model.layers.parameters() if p.dim() == 2)
    head = model.get_output_embeddings().weight
    return int(layers + head.numel() * head.element_size())


def build(model: str, variant: str, capacity: int):
    """A runner of `model` for "backend:dtype"; dtype int8 or int4: the model as a quantized drafter
    (`models.drafter = "quantized:bits=8"` or `4`, backends/quantize.py)."""
    backend, dtype = variant.split(":")
    bits = {"int8": 8, "int4": 4}.get(dtype)
    role = "drafter" if bits else "target"
    models = {"kind": "hf", "target": model, "drafter": f"quantized:bits={bits or 8}", "device": "cpu"}
    models |= {"backend": backend, "dtype": "float32" if bits else dtype}
    return build_runner(role, validate({"models": models, "decoding": {"max_new_tokens": capacity, "lookahead": 16}}))


def time_variants(runners: dict, context: int, tokens: list[int], rounds: int, clock=time.perf_counter) -> dict:
    """Median seconds of a forward of n new tokens after `context` cached ones, per (variant, n)."""
    for runner in runners.values():
        runner.forward(list(range(100, 100 + context)), 1)
    seconds = {(v, n): [] for v in runners for n in tokens}
    for _ in range(rounds + 2):
        for variant, runner in runners.items():
            for n in tokens:
                runner.crop(context)
                start = clock()
                runner.forward(list(range(200, 200 + n)), n)
                seconds[(variant, n)].append(clock() - start)
    return {key: statistics.median(values[2:]) for key, values in seconds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="inputs/models/smollm2-135m-instruct")
    parser.add_argument("--context", type=int, default=40)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(range(1, 10)))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["eager:float32", "packed:float32", "packed:bfloat16"])
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--json", help="also write the JSON record here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    bandwidth = read_bandwidth(clock=clock)
    runners = {v: build(args.model, v, args.context + max(args.tokens) + 8) for v in args.variants}
    median = time_variants(runners, args.context, args.tokens, args.rounds, clock)
    facts = cpu_facts()
    print(f"CPU: {facts['model']}; flags {', '.join(facts['flags'])}; native bf16: {facts['native_bf16']}")
    print(
        f"one core's streaming read bandwidth: {bandwidth / 1e9:.1f} GB/s; {args.threads} thread(s), {args.clock} clock\n"
    )
    sizes = " | ".join(f"T({n})/T({args.tokens[0]})" for n in args.tokens[1:])
    print(f"| variant | kernels | T({args.tokens[0]}) ms | {sizes} | floor ms | T({args.tokens[0]}) / floor |")
    print("|" + " --- |" * (len(args.tokens) + 4))
    rows = {}
    for variant, runner in runners.items():
        t = {n: median[(variant, n)] for n in args.tokens}
        floor = streamed_bytes(runner) / bandwidth
        kernels = runner.compile_info.get("kernels", runner.compile_info["backend"])
        ratios = " | ".join(f"{t[n] / t[args.tokens[0]]:.2f}" for n in args.tokens[1:])
        print(f"| {variant} | {kernels} | {1e3 * t[args.tokens[0]]:.1f} | {ratios} | {1e3 * floor:.1f} | "
              f"{t[args.tokens[0]] / floor:.2f} |")  # fmt: skip
        rows[variant] = {
            "ms": {n: round(1e3 * t[n], 3) for n in args.tokens},
            "floor_ms": round(1e3 * floor, 3),
            "streamed_mb": round(streamed_bytes(runner) / 2**20, 1),
            "backend": {k: v for k, v in runner.compile_info.items() if k != "cpu"},
        }
    record = {
        "model": args.model,
        "threads": args.threads,
        "clock": args.clock,
        "context": args.context,
        "cpu": facts,
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "variants": rows,
    }
    print(json.dumps(record, default=_plain))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1, default=_plain)
    return 0


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
