"""Adaptive speculation under noisy latencies: does the rule (dsi_mpi/decoding/adaptive.py) find si's best k when
each forward's time jitters, as on a shared machine, or does one unlucky timing lock it into a worse k?

usage: python -m analysis.adaptive_noise [--pair smollm2|default|both] [--jobs 200] [--sigma 0.15]
                                         [--spikes 0.03] [--spike-factor 2.0] [--json FILE]

Why a harness of its own: the simulator (dsi_mpi/timemodel/virtual.py) plays the coordinator on exact
latencies, and jobs on this machine are too noisy and too slow to repeat hundreds of times. Here si's loop is
played on a clock with seeded noise, feeding the rule what the coordinator feeds it: each draft step (the first
after a fully accepted block is a catch-up of two tokens), each restart's overhead beyond its drafts, each
verification's round trip by size (plain runs at k = 0: one task of `plain_run` tokens), the drafts compared and
accepted (i.i.d. at a). Every forward's time is its mean times a log-normal factor of mean 1 (sigma), and with
probability `spikes` times `spike_factor` (a neighbour's burst); nonsi decodes the same number of tokens on the
same noise. A job is a warm-up prompt (untimed, as in a job) and PROMPTS timed prompts of TOKENS tokens, with one
rule carried across them. Prints, per pair: the adaptive rule's speedup over nonsi (mean, 10th percentile, the
share of jobs below 0.95x the best fixed k's mean), each fixed k's mean, and the k the rule used most.

The pairs' means are measured ones: SmolLM2-135M with its calibrated int4 self-drafter (docs/models.md: T(1) 29 ms,
T(n) / T(1) from analysis/forward_cost.py, d 9.5 ms in the job, a 0.84, restart 1.3 ms), and the default pair
(about 1 ms per token, T(n) / T(1) 1.08-1.6, d 0.33 ms, a 0.79, restart 0.25 ms; docs/adaptive.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np

from dsi_mpi.decoding.adaptive import MAX_LOOKAHEAD, AdaptiveLookahead

PROMPTS, TOKENS = 8, 48
PAIRS = {
    "smollm2": dict(t1=0.029, ratios=(1.02, 1.03, 1.05, 1.07, 1.09, 1.11, 1.13), d=0.0095, r=0.0013, a=0.84, msg=2e-4),
    "default": dict(t1=0.001, ratios=(1.08, 1.15, 1.21, 1.3, 1.4, 1.5, 1.6), d=0.00033, r=0.00025, a=0.79, msg=5e-5),
}


class Noise:
    def __init__(self, seed: int, sigma: float, spikes: float, spike_factor: float):
        self.rng = np.random.default_rng(seed)
        self.sigma, self.spikes, self.spike_factor = sigma, spikes, spike_factor

    def __call__(self, mean: float) -> float:
        factor = self.rng.lognormal(-(self.sigma**2) / 2, self.sigma)
        return mean * factor * (self.spike_factor if self.rng.random() < self.spikes else 1.0)


def forward_mean(pair: dict, tokens: int) -> float:
    """T(n) without its two messages: T(1) times the measured ratio (the last one past the table's end)."""
    ratios = pair["ratios"]
    return pair["t1"] * (1.0 if tokens < 2 else ratios[min(tokens - 2, len(ratios) - 1)])


def si_block(pair: dict, k: int, noise: Noise, rng, catch_up: bool, rule) -> tuple[float, int, bool]:
    """One si block of k drafts: (seconds, tokens committed, whether the next first draft is a catch-up)."""
    seconds = 0.0
    for i in range(k):
        fed = 2 if (i == 0 and catch_up) else 1
        step = noise(pair["d"] * (1.0 if fed == 1 else 1.8))
        seconds += step
        if rule is not None:
            rule.observe_draft(step, fed)
    restart = noise(pair["r"])
    forward = noise(forward_mean(pair, k + 1)) + 2 * pair["msg"]
    accepted = 0
    while accepted < k and rng.random() < pair["a"]:
        accepted += 1
    if rule is not None:
        rule.observe_restart(restart)
        rule.observe_verification(forward, k + 1)
        rule.observe_acceptance(accepted, accepted + (1 if accepted < k else 0))
    return seconds + restart + forward, accepted + 1, accepted == k


def plain_run(pair: dict, tokens: int, noise: Noise, rule) -> float:
    seconds = sum(noise(pair["t1"]) for _ in range(tokens)) + 2 * pair["msg"]
    if rule is not None:
        rule.observe_verification(seconds, 1, plain=tokens)
    return seconds


def prompt(pair: dict, noise: Noise, rng, rule, fixed_k: int, used: list[int]) -> float:
    """si's seconds for one prompt of TOKENS tokens, k from the rule (fixed_k < 0) or fixed."""
    done, seconds, catch_up = 0, 0.0, False
    while done < TOKENS:
        k = rule.next_lookahead() if fixed_k < 0 else fixed_k
        used.append(k)
        if k == 0:
            run = rule.plain_run(TOKENS - done) if rule is not None else TOKENS - done
            seconds += plain_run(pair, run, noise, rule)
            done, catch_up = done + run, True
            continue
        block_s, tokens, catch_up = si_block(pair, k, noise, rng, catch_up, rule)
        seconds, done = seconds + block_s, done + tokens
    return seconds


def job(pair: dict, seed: int, fixed_k: int, noise_args: tuple) -> tuple[float, list[int]]:
    """Speedup over nonsi on the same noise (a warm-up prompt first, untimed), and the k of every block."""
    noise, rng = Noise(seed, *noise_args), np.random.default_rng(seed + 7)
    rule = AdaptiveLookahead("si") if fixed_k < 0 else None
    used: list[int] = []
    prompt(pair, noise, rng, rule, fixed_k, [])
    si_s = sum(prompt(pair, noise, rng, rule, fixed_k, used) for _ in range(PROMPTS))
    nonsi = Noise(seed + 13, *noise_args)
    nonsi_s = sum(nonsi(pair["t1"]) for _ in range(PROMPTS * TOKENS))
    return nonsi_s / si_s, used


def evaluate(name: str, jobs: int, noise_args: tuple) -> dict:
    pair = PAIRS[name]
    fixed = {k: statistics.mean(job(pair, s, k, noise_args)[0] for s in range(jobs)) for k in range(1, 9)}
    best_k = max(fixed, key=fixed.get)
    runs = [job(pair, s, -1, noise_args) for s in range(jobs)]
    speedups = np.array([r[0] for r in runs])
    modes = [max(set(u), key=u.count) for _, u in runs]
    return {
        "pair": name,
        "adaptive_mean": round(float(speedups.mean()), 4),
        "adaptive_p10": round(float(np.percentile(speedups, 10)), 4),
        "below_95pct_of_best": round(float((speedups < 0.95 * fixed[best_k]).mean()), 3),
        "best_fixed_k": best_k,
        "fixed": {k: round(v, 4) for k, v in fixed.items()},
        "k_used_most": {k: modes.count(k) for k in sorted(set(modes))},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=[*PAIRS, "both"], default="both")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--sigma", type=float, default=0.15)
    parser.add_argument("--spikes", type=float, default=0.03)
    parser.add_argument("--spike-factor", type=float, default=2.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    noise_args = (args.sigma, args.spikes, args.spike_factor)
    rows = [evaluate(p, args.jobs, noise_args) for p in (PAIRS if args.pair == "both" else [args.pair])]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "max_lookahead": MAX_LOOKAHEAD, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
