"""Offline simulator of the paper's time model, with the coordinator's own rules.

Why: the MPI coordinator (decoding/coordinator.py) is costly to run, so its latency is predicted here
first (the planner does, and `explain` sets runs against it) and emulated MPI runs are checked against
these numbers. The rules are not re-implemented: `simulate` runs the coordinator itself, unchanged, on a
simulated clock with simulated drafter and verifiers (dsi_mpi/timemodel/virtual.py), so every rule the coordinator
has (blocks, dispatch order, the non-SI thread only with a spare verifier, interruptible drafting,
cancellation between verifier layers, adaptive speculation) is the simulator's too, in every corner.
Latencies are the paper's: a target forward costs TTFT from an empty cache, else TPOT whatever its
length; a drafter step costs the drafter's TPOT. Only si and dsi are simulated; nonsi is closed form.

Acceptance is the paper's model: each draft equals the target's token with probability a, independently.
One flag per position and trial is drawn up front: under greedy decoding a draft is only ever checked if
it was made from the true prefix, so it is the same token however often the drafter gets there, and a flag
per position has the same law as a fresh draw per check (the emulated backend does the same). It also
gives common random numbers: with one seed, si and dsi see the same drafts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

import numpy as np

ALGORITHMS = ("nonsi", "si", "dsi")
TOL = 1e-9  # a hair above an integer still counts as that integer
LOOKAHEADS = (1, 2, 3, 4, 5, 6, 8, 10, 12)  # the planner's candidates for a fixed k


@dataclass(frozen=True)
class Latencies:
    """Forward latencies in seconds: TTFT = prefill of the prompt, TPOT = one more token. A verification of n
    tokens costs `verify_s(n)`: TPOT times verify_ratios[n - 2] for n >= 2 where the tuple has an entry (the
    measured T(n) / T(1) of a CPU; past its end the last ratio holds), else TPOT (the paper's flat T)."""

    drafter_ttft: float
    drafter_tpot: float
    target_ttft: float
    target_tpot: float
    verify_ratios: tuple[float, ...] = ()  # T(2) / T(1), T(3) / T(1), ...

    def __post_init__(self):
        for name in ("drafter_ttft", "drafter_tpot", "target_ttft", "target_tpot"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "verify_ratios", tuple(float(r) for r in self.verify_ratios))
        if min(self.drafter_tpot, self.target_tpot) <= 0 or min(self.drafter_ttft, self.target_ttft) < 0:
            raise ValueError(f"latencies must be positive (TTFT may be 0): {self}")
        if any(r <= 0 for r in self.verify_ratios):
            raise ValueError(f"verify_ratios must be positive: {self.verify_ratios}")

    @property
    def c(self) -> float:
        return self.drafter_tpot / self.target_tpot

    def verify_s(self, tokens: int) -> float:
        """T(n): a target forward of n new tokens over a cache."""
        if tokens < 2 or not self.verify_ratios:
            return self.target_tpot
        return self.target_tpot * self.verify_ratios[min(tokens - 2, len(self.verify_ratios) - 1)]


def latencies_from_c(
    c: float,
    target_tpot: float = 1.0,
    target_ttft: float | None = None,
    drafter_ttft: float | None = None,
    verify_ratios=(),
) -> Latencies:
    """Latencies with drafter_tpot = c * target_tpot; TTFTs default to target_ttft = target_tpot and
    drafter_ttft = c * target_ttft (the drafter's prefill scaled like its per-token time)."""
    target_ttft = target_tpot if target_ttft is None else target_ttft
    drafter_ttft = c * target_ttft if drafter_ttft is None else drafter_ttft
    return Latencies(drafter_ttft, c * target_tpot, target_ttft, target_tpot, tuple(verify_ratios))


@dataclass(frozen=True)
class SimulationResult:
    """latencies: one per trial (seconds to commit token N); accepted_per_verification: drafts committed
    / verifications applied; verifications_used (applied, prefill excluded) and verifications_discarded
    (sent, then preempted, stale or unused at the end) are means per trial."""

    algorithm: str
    lookahead: int
    verifiers: int
    new_tokens: int
    mean_latency: float
    std_error: float
    latencies: np.ndarray
    accepted_per_verification: float
    verifications_used: float
    verifications_discarded: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "latencies"}


def _draws(acceptance: float, new_tokens: int, seed: int, trials: int) -> np.ndarray:
    """Per trial and position: does the draft match the target? The same seed gives the same draws
    whatever the algorithm, k or V (common random numbers)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.random((trials, new_tokens)) < acceptance


def simulate(
    algorithm: str,
    latencies: Latencies,
    acceptance: float,
    lookahead: int = 5,
    verifiers: int = 1,
    new_tokens: int = 100,
    seed: int = 0,
    trials: int = 100,
    max_blocks_ahead: int | None = None,
    nonsi_thread: bool = False,
    drafter_layers: int = 1,
    message_s: float = 0.0,
) -> SimulationResult:
    """Monte Carlo latency of one algorithm ("nonsi", "si", "dsi") over `trials` seeded trials, each one
    prompt run by the coordinator itself on the simulated clock (dsi_mpi/timemodel/virtual.py).

    lookahead 0: adaptive speculation (the coordinator's default), which first learns on one more untimed
    draw, as a job does on its warm-up prompt. si ignores `verifiers` (it uses one). max_blocks_ahead: dsi
    drafts while fewer blocks than this await replies (default V + 1, as the coordinator). nonsi_thread:
    runtime.nonsi_thread (the coordinator uses it only with 2+ verifiers). drafter_layers = L: replies are
    also read at L - 1 evenly spaced points inside each drafter step (the coordinator reads them between
    the drafter's layers; the emulated backend has 8 slices). message_s: what a message costs a rank waiting
    for it (dsi_mpi/timemodel/virtual.py)."""
    from dsi_mpi.timemodel.virtual import run_simulated

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
    if not 0.0 <= acceptance <= 1.0 or min(verifiers, new_tokens, trials, drafter_layers) < 1 or lookahead < 0:
        raise ValueError("need 0 <= acceptance <= 1, lookahead >= 0 (0: adaptive) and verifiers, tokens, trials >= 1")
    k, V, N = int(lookahead), int(verifiers), int(new_tokens)
    if algorithm == "nonsi":
        lat = np.full(trials, nonsi_latency(latencies, N))
        return SimulationResult("nonsi", k, V, N, float(lat[0]), 0.0, lat, 0.0, 0.0, 0.0)
    draws = _draws(acceptance, N, seed, trials)
    warmup = _draws(acceptance, N, seed + 1_000_003, 1)[0] if k == 0 else None
    extra = dict(max_blocks_ahead=max_blocks_ahead or 0, nonsi_thread=nonsi_thread, drafter_layers=drafter_layers)
    records = run_simulated(algorithm, latencies, draws, k, V, message_s=message_s, warmup=warmup, **extra)
    lat = np.array([r.wall_s for r in records])
    used = np.array([r.tasks_used - 1 for r in records], dtype=float)  # the prefill's block is not a verification
    sent = np.array([r.tasks_sent for r in records], dtype=float)
    prefills = 1 if algorithm == "si" else V
    se = float(lat.std(ddof=1) / math.sqrt(trials)) if trials > 1 else 0.0
    return SimulationResult(
        algorithm,
        k,
        1 if algorithm == "si" else V,
        N,
        float(lat.mean()),
        se,
        lat,
        float(sum(r.accepted for r in records) / max(used.sum(), 1)),
        float(used.mean()),
        float((sent - used - prefills).mean()),
    )


def latency_of_draw(
    algorithm: str,
    latencies: Latencies,
    match,
    lookahead: int,
    verifiers: int = 1,
    nonsi_thread: bool = False,
    drafter_layers: int = 1,
) -> float:
    """The latency of ONE given draw (match[p]: does the draft of generated token p match?), e.g. the exact
    draws of an emulated run, so that model and machine are compared on the same luck."""
    from dsi_mpi.timemodel.virtual import run_simulated

    match = np.asarray(match, dtype=bool)
    if algorithm == "nonsi":
        return nonsi_latency(latencies, len(match))
    extra = dict(nonsi_thread=nonsi_thread, drafter_layers=drafter_layers)
    return run_simulated(algorithm, latencies, [match], int(lookahead), int(verifiers), **extra)[0].wall_s


def nonsi_latency(latencies: Latencies, new_tokens: int) -> float:
    """Plain decoding: the prefill yields token 0, then one target forward per token."""
    return latencies.target_ttft + (new_tokens - 1) * latencies.target_tpot


def si_expected_latency(
    latencies: Latencies, acceptance: float, lookahead: int, new_tokens: int, exact: bool = True
) -> float:
    """Expected si latency under the simulator's rules.

    Token 0 is committed at max(target TTFT, drafter TTFT) (the reply is read after the drafter's prefill).
    Each later round drafts kk = min(k, tokens left) tokens (kk * Dc), verifies them (Tv = T(kk + 1)) and commits j + 1
    tokens with probability a^j (1 - a) for j < kk, or kk + 1 with probability a^kk.
    exact=True: the expectation by recursion over the tokens left, f(n) = kk Dc + Tv + sum_i P(i) f(n - i),
      exact for the short last round and the first (for k = 1 the block [0] from the drafter's prefill is
      verified for its bonus only, when token 0's draft matched).
    exact=False: the paper's renewal formula, N - 1 tokens at (1 - a^(k+1)) / (1 - a) tokens per round
      of k Dc + Tv. It ignores the overshoot of the last round, k = 1's first round and the shorter rounds
      within k tokens of the end; the error is at most k Dc + Tv + k (k+1) / 2 Dc (checked on a grid)."""
    k, N, a = int(lookahead), int(new_tokens), float(acceptance)
    Dc, Tv = latencies.drafter_tpot, latencies.verify_s
    start = max(latencies.target_ttft, latencies.drafter_ttft)
    if N <= 1:
        return start
    if not exact:
        return start + (N - 1) * (k * Dc + Tv(k + 1)) / sum(a**i for i in range(k + 1))
    f = np.zeros(N + k + 1)  # f[n + k + 1] = expected time to commit n more tokens; f(<=0) = 0
    for n in range(1, N):
        kk = min(k, n)
        p = np.append(a ** np.arange(kk) * (1 - a), a**kk)  # P(commit 1 .. kk + 1 tokens)
        prev = f[n + k - kk : n + k + 1][::-1]  # f(n-1), ..., f(n-kk-1)
        f[n + k + 1] = kk * Dc + Tv(kk + 1) + float(p @ prev)
    fn = lambda n: f[n + k + 1]
    if k == 1:
        return start + a * (Tv(2) + fn(N - 2)) + (1 - a) * fn(N - 1)
    return start + fn(N - 1)


def min_verifiers_without_queueing(c: float, lookahead: int) -> int:
    """ceil(1 / (k c)) verifiers (c > 0): the drafter forms a block every k c target forwards and each
    verification holds a verifier for one target forward, so fewer servers than this make blocks queue.
    (The coordinator reads a reply only at a drafter step end, i.e. after ceil(1/c) steps, which gives
    the same count since ceil(ceil(x) / k) = ceil(x / k).) With c >= 1 this is 1."""
    if c <= 0 or lookahead < 1:
        raise ValueError("need c > 0 and lookahead >= 1")
    return max(1, math.ceil(1.0 / (lookahead * c) - TOL))


@dataclass(frozen=True)
class Setting:
    lookahead: int
    verifiers: int
    result: SimulationResult  # the dsi simulation at that setting


def best_setting(
    latencies: Latencies,
    acceptance: float,
    new_tokens: int,
    verifier_budget: int,
    lookaheads=LOOKAHEADS,
    seed: int = 0,
    trials: int = 20,
    **kwargs,
) -> Setting:
    """The (k, V <= budget) with the lowest simulated dsi latency (planner's lookahead/verifiers "auto").

    Every candidate sees the same draws (one seed), so comparisons are paired. On a tie the smaller V, then
    the smaller k, wins: fewer GPUs for the same latency. More verifiers are not always better: a drafter
    that drafts further ahead reads replies later (only between its steps)."""
    best = None
    for V in range(1, int(verifier_budget) + 1):
        for k in lookaheads:
            res = simulate("dsi", latencies, acceptance, k, V, new_tokens, seed, trials, **kwargs)
            if best is None or res.mean_latency < best.result.mean_latency * (1 - 1e-12):
                best = Setting(int(k), V, res)
    return best


def best_lookahead(
    algorithm: str,
    latencies: Latencies,
    acceptance: float,
    new_tokens: int,
    verifiers: int = 1,
    lookaheads=LOOKAHEADS,
    seed: int = 0,
    trials: int = 20,
    **kwargs,
) -> tuple[int | None, float]:
    """(k, latency) minimising the latency: si by its exact expectation, dsi by simulation with the given
    verifiers; nonsi has no lookahead and returns (None, its latency)."""
    if algorithm == "nonsi":
        return None, nonsi_latency(latencies, new_tokens)

    def latency(k):
        if algorithm == "si":
            return si_expected_latency(latencies, acceptance, k, new_tokens)
        run = simulate("dsi", latencies, acceptance, k, verifiers, new_tokens, seed, trials, **kwargs)
        return run.mean_latency

    return min(((int(k), latency(k)) for k in lookaheads), key=lambda kv: kv[1])


USAGE = (
    "python -m dsi_mpi simulate --target-tpot S [--target-ttft S] (--drafter-tpot S | --c C) "
    "[--drafter-ttft S] --acceptance A --lookahead K --verifiers V --tokens N [--seed 0] "
    "[--trials 200] [--nonsi-thread] [--drafter-layers L] [--verify-ratios R2 R3 ...] [--json]"
)
OPTIONS = [
    ("--target-tpot", float, True, "target seconds per token"),
    ("--target-ttft", float, False, "target prefill seconds (default: target TPOT)"),
    ("--drafter-ttft", float, False, "drafter prefill seconds (default: c * target TTFT)"),
    ("--acceptance", float, True, "per-token acceptance rate a"),
    ("--lookahead", int, True, "drafts per verification, k (0: adaptive speculation)"),
    ("--verifiers", int, True, "target servers for dsi, V (si uses one)"),
    ("--tokens", int, True, "new tokens per generation, N"),
    ("--seed", int, False, "seed of the draws (default 0)"),
    ("--trials", int, False, "Monte Carlo trials (default 200)"),
    ("--drafter-layers", int, False, "also read replies between L drafter layers (default 1)"),
]
RATIOS_HELP = "T(2)/T(1) T(3)/T(1) ...: a verification of n tokens costs target TPOT x this (default: flat)"


def main(argv: list[str] | None = None) -> int:
    """Expected latencies of nonsi, si and dsi for one setting, their ratios and the minimum verifiers."""
    ap = argparse.ArgumentParser(prog="python -m dsi_mpi simulate", usage=USAGE, description=main.__doc__)
    for flag, kind, required, text in OPTIONS:
        ap.add_argument(flag, type=kind, required=required, help=text)
    drafter = ap.add_mutually_exclusive_group(required=True)
    drafter.add_argument("--drafter-tpot", type=float, help="drafter seconds per token")
    drafter.add_argument("--c", type=float, help="drafter TPOT as a fraction of the target's")
    ap.add_argument("--nonsi-thread", action="store_true", help="dsi sends a zero-draft block per rejection")
    ap.add_argument("--verify-ratios", type=float, nargs="+", default=[], help=RATIOS_HELP)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.set_defaults(seed=0, trials=200, drafter_layers=1)
    args = ap.parse_args(argv)
    c = args.c if args.c is not None else args.drafter_tpot / args.target_tpot
    a, k, V, N = args.acceptance, args.lookahead, args.verifiers, args.tokens
    try:
        lat = latencies_from_c(c, args.target_tpot, args.target_ttft, args.drafter_ttft, args.verify_ratios)
        extra = dict(nonsi_thread=args.nonsi_thread, drafter_layers=args.drafter_layers)
        runs = {alg: simulate(alg, lat, a, k, V, N, args.seed, args.trials, **extra) for alg in ALGORITHMS}
    except ValueError as err:
        ap.error(str(err))
    t = {alg: r.mean_latency for alg, r in runs.items()}
    out = {
        "latencies": lat.__dict__,
        "c": c,
        "acceptance": a,
        "lookahead": k,
        "verifiers": V,
        "tokens": N,
        "seed": args.seed,
        "trials": args.trials,
        **extra,
        "runs": {name: r.to_dict() for name, r in runs.items()},
        "si_expected_exact": si_expected_latency(lat, a, k, N) if k else None,  # k = 0: adaptive, simulated only
        "si_expected_paper": si_expected_latency(lat, a, k, N, exact=False) if k else None,
        "speedup_si_over_nonsi": t["nonsi"] / t["si"],
        "speedup_dsi_over_si": t["si"] / t["dsi"],
        "speedup_dsi_over_nonsi": t["nonsi"] / t["dsi"],
        "min_verifiers_without_queueing": min_verifiers_without_queueing(c, k) if k else None,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"c = {c:.4g}, a = {a}, k = {k}, V = {V}, N = {N}, {args.trials} trials, seed {args.seed}")
    for alg, r in runs.items():
        print(
            f"  {alg:6s} {r.mean_latency:10.4f} s  +- {r.std_error:.4f}  (verifications used "
            f"{r.verifications_used:.1f}, discarded {r.verifications_discarded:.1f} per run)"
        )
    if k:
        print(f"  si expected {out['si_expected_exact']:.4f} s, paper's formula {out['si_expected_paper']:.4f} s")
    for key in ("speedup_si_over_nonsi", "speedup_dsi_over_si", "speedup_dsi_over_nonsi"):
        print(f"  {key.replace('_', ' ')}: {out[key]:.3f}x")
    if k:
        print(f"  min verifiers without queueing, ceil(1/(k c)): {out['min_verifiers_without_queueing']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def pipeline_setting(latencies: Latencies, stages: int, groups: int = 1, hop_s: float = 0.0) -> tuple[Latencies, int]:
    """A job's pipelined verifier groups as the model sees them: (latencies, SP). A group of P stages holds
    one task per stage, so it verifies like P replicas whose forward is the whole target's plus the P - 1
    hops of an activation message between stages; `groups` groups give SP = groups x P. Not modelled: a
    group's first stage takes a new task only every target_tpot / P (binding only when blocks are formed
    faster than that, P k c < 1)."""
    if stages < 1 or groups < 1 or hop_s < 0:
        raise ValueError("need stages >= 1, groups >= 1 and hop_s >= 0")
    extra = (stages - 1) * hop_s
    lat = Latencies(
        latencies.drafter_ttft,
        latencies.drafter_tpot,
        latencies.target_ttft + extra,
        latencies.target_tpot + extra,
        latencies.verify_ratios,
    )
    return lat, groups * stages
