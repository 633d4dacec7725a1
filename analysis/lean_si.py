"""The yardstick for what the coordinator adds: si in a few lines of Python on a job's models, and the time model's
bound at their bare costs.

Why: on the embedded default pair (a target token of about 0.7 ms) dsi-mpi's si ran at about plain decoding's
speed, short of the issue's bars. Whether that is the coordinator's own work or the pair itself is measured
here. This loop runs si with the job's own runners (`build_runner`: the packed backend, the same kernels),
mpi4py and one verifier, and nothing else: no records, no timeline, no checks, no cancellation, no adaptive
k (and no keep-warm unless --keep-warm: the verifier's waits then run throwaway forwards, as
runtime.keep_warm does in a job). It times the bare costs (the target's prefill and plain step, its forward of n tokens, the
drafter's one-token step) and feeds them to the paper's time model (dsi_mpi/timemodel/simulator.py) with no
messages and no coordinator: the most si and dsi (one verifier) can gain on these models on this machine.
Greedy only; every si output is checked against nonsi's tokens.

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python -m analysis.lean_si [CONFIG.toml]
        [--lookahead 1 2 3 4 5] [--rounds 2] [--prompts N] [--keep-warm] [--set section.key=value ...]

Rank 1 holds the target: it decodes each prompt plainly in its own loop (nonsi) and answers verifications.
Rank 0 drafts. Measured speeds are of decoding after the first token (the prefill is the same for both);
a block is drafting (rank 0's steps, catch-up included) then its round trip (send to reply).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from dsi_mpi.backends.base import common_prefix_len

STOP, NONSI, VERIFY = -1, -2, -3


def _receive(comm, status, warm=None) -> np.ndarray:
    """The next message, spinning (each rank has a core of its own); `warm`: the target, whose throwaway
    forwards (PackedRunner.idle_forward, runtime.keep_warm) fill the wait, each stopped when the message lands."""
    from mpi4py import MPI

    while not comm.Iprobe(source=MPI.ANY_SOURCE, tag=0, status=status):
        if warm is not None:
            warm.idle_forward(lambda: comm.Iprobe(source=MPI.ANY_SOURCE, tag=0))
    buf = np.empty(status.Get_count(MPI.INT64_T), dtype=np.int64)
    comm.Recv([buf, MPI.INT64_T], source=status.Get_source(), tag=0)
    return buf


def _send(comm, dest: int, values) -> None:
    comm.Send(np.asarray(values, dtype=np.int64), dest=dest, tag=0)


def _medians(seconds: dict) -> dict:
    return {key: statistics.median(values) for key, values in seconds.items() if values}


def serve(comm, target, prompts: list[list[int]], new_tokens: int, keep_warm: bool) -> None:
    """Rank 1: plain decoding of a prompt on request (its prefill and decode ns first), or the target's greedy
    token at every position of a verification; at STOP, the median forward of each size, in ns."""
    from mpi4py import MPI

    status, forwards = MPI.Status(), {}
    warm = target if keep_warm and hasattr(target, "idle_forward") else None
    while (msg := _receive(comm, status, warm))[0] != STOP:
        if msg[0] == NONSI:
            target.reset()
            start = time.perf_counter_ns()
            out = [int(target.greedy(prompts[int(msg[1])], 1)[0])]
            first = time.perf_counter_ns()
            while len(out) < new_tokens:
                out.append(int(target.greedy(out[-1:], 1)[0]))
            _send(comm, 0, [first - start, time.perf_counter_ns() - first, *out])
            continue
        base, tokens = int(msg[1]), [int(t) for t in msg[2:]]
        target.crop(base)
        start = time.perf_counter()
        verdict = target.greedy(tokens, len(tokens))
        if base:  # a prompt's prefill is timed by NONSI
            forwards.setdefault(len(tokens), []).append(time.perf_counter() - start)
        _send(comm, 0, verdict)
    _send(comm, 0, [v for n, s in _medians(forwards).items() for v in (n, round(s * 1e9))])


class LeanSI:
    """Rank 0: si with k drafts per block against rank 1, timing each block and the drafter's steps."""

    def __init__(self, comm, drafter, new_tokens: int):
        from mpi4py import MPI

        self.comm, self.drafter, self.new_tokens, self.status = comm, drafter, new_tokens, MPI.Status()
        self.seconds = {"drafting": [], "round_trip": [], "draft_step": [], "drafter_prefill": []}
        self.compared = self.accepted = 0

    def _draft(self, text: list[int]) -> int:
        """The drafter's greedy token after `text`, feeding only what its cache lacks."""
        keep = min(common_prefix_len(self.drafter.tokens, text), len(text) - 1)
        self.drafter.crop(keep)
        start = time.perf_counter()
        token = int(self.drafter.greedy(text[keep:], 1)[0])
        fed = len(text) - keep
        step = "draft_step" if fed == 1 else "drafter_prefill" if keep == 0 else None
        if step:
            self.seconds[step].append(time.perf_counter() - start)
        return token

    def run(self, prompt: list[int], k: int) -> tuple[list[int], float]:
        """(the new tokens, the seconds after the first) for one prompt."""
        self.drafter.reset()
        _send(self.comm, 1, [VERIFY, 0, *prompt])
        text, n_prompt = [*prompt, int(_receive(self.comm, self.status)[-1])], len(prompt)
        start = time.perf_counter()
        while len(text) - n_prompt < self.new_tokens:
            text += self._block(text, k)
        return text[n_prompt : n_prompt + self.new_tokens], time.perf_counter() - start

    def _block(self, text: list[int], k: int) -> list[int]:
        """One si iteration from `text` (the target's cache holds all of it but the last token)."""
        began = time.perf_counter()
        drafts = []
        for _ in range(k):
            drafts.append(self._draft(text + drafts))
        sent = time.perf_counter()
        _send(self.comm, 1, [VERIFY, len(text) - 1, text[-1], *drafts])
        verdict = _receive(self.comm, self.status)
        self.seconds["drafting"].append(sent - began)
        self.seconds["round_trip"].append(time.perf_counter() - sent)
        stand = 0
        while stand < k and drafts[stand] == verdict[stand]:
            stand += 1
        self.compared, self.accepted = self.compared + min(stand + 1, k), self.accepted + stand
        return [*drafts[:stand], int(verdict[stand])]


def coordinate(comm, drafter, prompts: list[list[int]], lookaheads: list[int], rounds: int, new_tokens: int):
    """Rank 0: nonsi then si at each k on every prompt, `rounds` times: ({algorithm: seconds after the first
    token}, {k: LeanSI}, the target's prefill seconds, per prompt)."""
    from mpi4py import MPI

    status, prefill = MPI.Status(), []
    lean = {k: LeanSI(comm, drafter, new_tokens) for k in lookaheads}
    seconds = dict.fromkeys(["nonsi", *lookaheads], 0.0)
    for _ in range(rounds):
        for index, prompt in enumerate(prompts):
            _send(comm, 1, [NONSI, index])
            reply = _receive(comm, status)
            prefill.append(reply[0] * 1e-9)
            seconds["nonsi"] += reply[1] * 1e-9
            for k in lookaheads:
                tokens, spent = lean[k].run(prompt, k)
                if tokens != [int(t) for t in reply[2:]]:
                    raise SystemExit(f"lean si at k = {k} parted from nonsi's tokens on prompt {index}")
                seconds[k] += spent
    return seconds, lean, statistics.median(prefill)


def bound(costs: dict, acceptance: float, new_tokens: int, lookaheads: list[int]) -> dict:
    """The time model at the bare costs (no messages, no coordinator): the best k and speedup over nonsi of si
    and of dsi with one verifier, the prefill included."""
    from dsi_mpi.timemodel.inputs import verify_ratios
    from dsi_mpi.timemodel.simulator import Latencies, best_lookahead, nonsi_latency

    t1 = costs["target_step"]
    ratios = verify_ratios({1: t1, **costs["forward"]})
    lat = Latencies(costs["drafter_prefill"], costs["draft_step"], costs["target_prefill"], t1, ratios)
    plain = nonsi_latency(lat, new_tokens)
    out = {}
    for algorithm in ("si", "dsi"):
        k, seconds = best_lookahead(algorithm, lat, acceptance, new_tokens, lookaheads=lookaheads, trials=200)
        out[algorithm] = (k, plain / seconds)
    return out


def _models(args):
    """The config, the prompts as the job tokenizes them, and this rank's runner."""
    from mpi4py import MPI

    from dsi_mpi.backends.checks import load_tokenizer
    from dsi_mpi.backends.loading import build_runner
    from dsi_mpi.io.config import load_config
    from dsi_mpi.io.prompts import load_prompts

    cfg = load_config(args.config, args.set)
    tokenizer = load_tokenizer(cfg.models.target, "target")
    texts = load_prompts(cfg.prompts.path, limit=args.prompts)
    prompts = [[int(t) for t in tokenizer(p.text)["input_ids"]] for p in texts]
    role = "drafter" if MPI.COMM_WORLD.Get_rank() == 0 else "target"
    return cfg, prompts, build_runner(role, cfg, longest_prompt=max(map(len, prompts)))


def main(argv=None) -> int:
    from mpi4py import MPI

    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[2].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="inputs/configs/default.toml")
    parser.add_argument("--lookahead", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=0, help="the first N prompts only (0: all)")
    parser.add_argument("--set", action="append", default=[], help="a config override, as for `run`")
    parser.add_argument("--keep-warm", action="store_true", help="the verifier's waits run throwaway forwards")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    if comm.Get_size() != 2:
        raise SystemExit("lean_si runs on exactly 2 ranks (mpiexec -n 2)")
    torch.set_num_threads(1)
    cfg, prompts, runner = _models(args)
    new_tokens = cfg.decoding.max_new_tokens
    if comm.Get_rank() == 1:
        serve(comm, runner, prompts, new_tokens, args.keep_warm)
        return 0
    seconds, lean, prefill = coordinate(comm, runner, prompts, args.lookahead, args.rounds, new_tokens)
    _send(comm, 1, [STOP])
    pairs = _receive(comm, MPI.Status())
    forward = {int(n): ns * 1e-9 for n, ns in zip(pairs[::2], pairs[1::2])}
    _report(seconds, lean, forward, prefill, new_tokens, args.rounds * len(prompts))
    return 0


def _bare_costs(seconds: dict, lean: dict, forward: dict, prefill: float, per_token: int) -> dict:
    """The medians the bound is computed from: the target's plain step, prefill and forward of n tokens, the
    drafter's one-token step and prefill."""
    steps = {
        name: [s for run in lean.values() for s in run.seconds[name]] for name in ("draft_step", "drafter_prefill")
    }
    costs = {"target_step": seconds["nonsi"] / per_token, "target_prefill": prefill, "forward": forward}
    costs |= _medians(steps)
    if "draft_step" not in costs:  # every step fed two tokens (k = 1, all accepted): a block's drafting then
        costs["draft_step"] = min(statistics.median(run.seconds["drafting"]) / k for k, run in lean.items())
    return costs


def _report(seconds: dict, lean: dict, forward: dict, prefill: float, new_tokens: int, runs: int) -> None:
    """The measured table, the bare costs and the time model's bound at them."""
    from dsi_mpi.backends.cpu import cpu_facts

    facts = cpu_facts()
    costs = _bare_costs(seconds, lean, forward, prefill, runs * (new_tokens - 1))
    acceptance = sum(r.accepted for r in lean.values()) / max(sum(r.compared for r in lean.values()), 1)
    print(f"CPU: {facts['model']}; flags {', '.join(facts['flags']) or 'none'}; 2 ranks, 1 thread each")
    print(f"{runs} prompt runs x {new_tokens} tokens; speeds after the first token (the prefill is the same for all)")
    print("| algorithm | ms per token | vs nonsi | blocks | drafting ms per block | round trip ms | T(k+1) ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| nonsi | {1e3 * costs['target_step']:.3f} | 1.000x | | | | |")
    for k, run in lean.items():
        med = _medians(run.seconds)
        print(
            f"| si k={k} | {1e3 * seconds[k] / (runs * (new_tokens - 1)):.3f} | {seconds['nonsi'] / seconds[k]:.3f}x "
            f"| {len(run.seconds['round_trip'])} | {1e3 * med['drafting']:.3f} | {1e3 * med['round_trip']:.3f} "
            f"| {1e3 * forward.get(k + 1, float('nan')):.3f} |"
        )
    print(
        f"bare costs (medians): target prefill {1e3 * prefill:.2f} ms, plain step {1e3 * costs['target_step']:.3f} ms, "
        f"drafter step {1e3 * costs['draft_step']:.3f} ms (c {costs['draft_step'] / costs['target_step']:.2f}), "
        f"drafter prefill {1e3 * costs['drafter_prefill']:.2f} ms; acceptance {acceptance:.3f}"
    )
    best = bound(costs, acceptance, new_tokens, list(lean))
    print(
        "the time model at these costs alone (no messages, no coordinator; prefill included): "
        + "; ".join(f"{a} {x:.3f}x nonsi at k = {k}" for a, (k, x) in best.items())
        + " (dsi with one verifier)"
    )


if __name__ == "__main__":
    sys.exit(main())
