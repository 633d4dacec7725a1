"""Offline simulator of the paper's time model, following our coordinator's rules step by step.

Why: the MPI coordinator (decoding/coordinator.py) is costly to run, so its latency is predicted here first and the
emulated MPI run is checked against these numbers. The rules are the coordinator's, not an idealised DSI:
* rank 0 runs drafter and coordinator in one process: replies are read between drafter steps (a step in
  progress is finished first) or at once when the drafter idles (drafter_layers > 1: also between the
  drafter's layers, and a step whose text changed is dropped; the coordinator's interruptible drafting);
* k drafts form a block, sent to a free verifier once formed, else queued (FIFO); a verification costs one
  target forward (TPOT) whatever its length, as in the paper;
* results apply in position order; a rejection commits the target's token, drops every other block
  (preempting in-flight ones) and restarts drafting; a fully accepted block also commits the target's next
  token (the bonus), checked at once against an existing draft for it (immediate pruning);
* the target's prefill is the first "block": every verifier prefills (TTFT), the first reply commits
  token 0 as plain decoding would; the drafter's own prefill yields its draft for position 0.
Copied from the coordinator where the paper is silent: a block starts where the last pending block ends,
else at the first uncommitted position; nothing is drafted past position N - 1 (the last block may be
short); a block formed by a step is sent before the replies that came in during that step are read; dsi
drafts while fewer than V + 1 blocks (the prefill counts) await replies; si only when none is pending.
Optional, off by default: nonsi_thread, cancel_latency, max_blocks_ahead (named as the runtime.* config keys).

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
from collections import deque
from dataclasses import dataclass

import numpy as np

ALGORITHMS = ("nonsi", "si", "dsi")
TOL = 1e-9  # in drafter steps: a reply this close to a step end is read at that step end
INF = math.inf
UNSENT, PREFILL = -1, -2


@dataclass(frozen=True)
class Latencies:
    """Forward latencies in seconds: TTFT = prefill of the prompt, TPOT = one more token (any k)."""

    drafter_ttft: float
    drafter_tpot: float
    target_ttft: float
    target_tpot: float

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            object.__setattr__(self, name, float(getattr(self, name)))
        if min(self.drafter_tpot, self.target_tpot) <= 0 or min(self.drafter_ttft, self.target_ttft) < 0:
            raise ValueError(f"latencies must be positive (TTFT may be 0): {self}")

    @property
    def c(self) -> float:
        return self.drafter_tpot / self.target_tpot


def latencies_from_c(
    c: float, target_tpot: float = 1.0, target_ttft: float | None = None, drafter_ttft: float | None = None
) -> Latencies:
    """Latencies with drafter_tpot = c * target_tpot; TTFTs default to target_ttft = target_tpot and
    drafter_ttft = c * target_ttft (the drafter's prefill scaled like its per-token time)."""
    target_ttft = target_tpot if target_ttft is None else target_ttft
    drafter_ttft = c * target_ttft if drafter_ttft is None else drafter_ttft
    return Latencies(drafter_ttft, c * target_tpot, target_ttft, target_tpot)


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


def _ceil(x: float) -> int:
    """Whole drafter steps covering x steps; a hair above an integer still counts as that integer."""
    return math.ceil(x - TOL)


def _draws(acceptance: float, new_tokens: int, seed: int, trials: int) -> np.ndarray:
    """Per trial and position: does the draft match the target? The same seed gives the same draws
    whatever the algorithm, k or V (common random numbers)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.random((trials, new_tokens)) < acceptance


def _next_mismatch(match: np.ndarray) -> np.ndarray:
    """nm[i, p] = first position q >= p whose draft does not match in trial i (N if none; p = 0..N)."""
    n = match.shape[1]
    index = np.where(match, n, np.arange(n))
    nm = np.minimum.accumulate(index[:, ::-1], axis=1)[:, ::-1]
    return np.concatenate([nm, np.full((len(match), 1), n)], axis=1)


def _dsi_jump(t0, s, mism, lat, k, V, N, nsteps, throttled):
    """Skip in closed form the dsi segments after a restart (time t0, position s) that end in a rejection
    well before the end; returns (time, position, used, discarded, accepted) at the restart after them.

    A segment is the run of matches up to the next mismatch q: it ends when block b = max(0, ceil((q - s)
    / k) - 1) is applied and restarts at q + 1. nsteps = drafter steps per target forward. Closed forms:
    * free (V >= ceil(nsteps / k), k <= nsteps): no block waits or is throttled, drafting runs on the grid
      t0 + i Dc, block b is formed at step (b+1) k and its reply read nsteps steps later;
    * throttled (V k < nsteps, V + 1 blocks ahead): the drafter outruns the verifiers and idles, so replies
      are read on arrival; block b >= V starts when block b - V's reply is read, so block b's reply
      lands at ((b mod V) + 1) k Dc + (b // V + 1) Tv.
    Near the end (the drafter may reach position N - 1: short last block, idle drafter) the event loop
    takes over."""
    Dc, Tv = lat.drafter_tpot, lat.target_tpot
    q = mism[np.searchsorted(mism, s) :]
    q = q[q < N - 1]
    starts = np.concatenate(([s], q[:-1] + 1))
    b = np.maximum(0, (q - starts - 1) // k)  # the block whose reply ends the segment
    steps = (b + 1) * k + nsteps  # free: drafter steps until that reply is read
    reach = (b + V + 1) * k if throttled else steps  # drafts made by then (at most)
    unsafe = np.flatnonzero(reach >= N - starts)
    n = len(q) if len(unsafe) == 0 else int(unsafe[0])
    if n == 0:
        return t0, s, 0, 0, 0
    b, steps, s_next = b[:n], steps[:n], int(q[n - 1]) + 1
    used = int(b.sum()) + n
    if throttled:
        t = t0 + float(((b % V + 1) * k).sum()) * Dc + float((b // V + 1).sum()) * Tv
        return t, s_next, used, n * (V - 1), (s_next - s) - n
    sent = (steps - 1) // k  # blocks formed (and sent) before that step
    tie = (steps % k == 0) & (sent - b < V)  # a block formed at that very step, sent first
    return t0 + float(steps.sum()) * Dc, s_next, used, int((sent + tie).sum()) - used, (s_next - s) - n


def _trial(si, lat, nm, match, k, V, N, ahead, cancel, fast, probe=False, layers=1):
    """One si or dsi trial, event by event in the coordinator's order, taking the drafter's steps between
    two events in one go. Returns (latency, used, discarded, accepted). fast: skip segments with _dsi_jump
    where exact. probe, layers: see simulate. Time runs in ticks of Dc / layers from `origin`."""
    Dc, Tv, L, probe = lat.drafter_tpot, lat.target_tpot, layers, probe and not si
    tol, nv, tick, nsteps = TOL * Dc, 1 if si else V, Dc / layers, _ceil(lat.target_tpot / Dc)
    n0 = -(-nsteps // k)  # verifiers that keep up with the drafter
    throttled = V * k < nsteps and ahead == V + 1
    free_regime = k <= nsteps and V >= n0 and ahead > n0 and L == 1
    fast = fast and not si and not probe and cancel == 0 and (throttled or free_regime)
    free = [INF] * nv  # all verifiers start with their prefill
    stale = {}  # preempted verifier -> when its reply lands
    blocks = deque([[0, 0, PREFILL, lat.target_ttft, False]])  # start, size, verifier, finish, done
    t, committed, drafted, start = 0.0, 0, 0, 0  # start: where the next block will begin
    origin, ticks, busy, first = lat.drafter_ttft - Dc, 0, True, True  # drafter prefill = first step
    used = discarded = accepted = 0
    matches, mism = match.tolist(), None

    def free_stale():
        for v in [v for v, when in stale.items() if when <= t + tol]:
            free[v] = t
            del stale[v]

    def dispatch():
        for b in blocks:
            if b[2] == UNSENT:
                v = next((i for i in range(nv) if free[i] <= t + tol), None)
                if v is None:
                    return
                b[2], b[3], free[v] = v, t + Tv, INF

    while True:
        pending = min((b[3] for b in blocks if b[2] != UNSENT and not b[4]), default=INF)
        if stale:  # an aborted task's reply frees its verifier
            pending = min([pending] + list(stale.values()))
        stepped, mid = busy, False
        if busy:  # drafter ticks up to the next event
            goal = (ticks // L + (1 if first else min(k - (drafted - start), N - drafted))) * L
            if pending < INF:  # its own prefill is read only at its end
                goal = min(goal, max(ticks + 1, _ceil((pending - origin) / tick)) if not first else L)
            drafted += goal // L - ticks // L
            ticks, mid, first = goal, goal % L != 0, False
            t = origin + ticks * tick
            if not mid:
                busy = False
                if drafted - start >= k or (drafted >= N and drafted > start):
                    size = min(k, drafted - start)
                    blocks.append([start, size, UNSENT, INF, False])
                    start += size
                dispatch()
        elif pending == INF:
            raise RuntimeError("simulated coordinator stalled")
        else:
            t = max(t, pending)
        for b in blocks:  # read every reply that has come in
            if b[2] != UNSENT and not b[4] and b[3] <= t + tol:
                b[4] = True
                if b[2] == PREFILL:
                    free[:] = [t] * nv
                else:
                    free[b[2]] = t
        free_stale()
        rejected, moved = None, False
        while blocks and blocks[0][4] and rejected is None:  # apply in position order
            p, size, v = blocks.popleft()[:3]
            used += v != PREFILL
            j = min(nm[committed] - p, size)  # first mismatch (committed ones matched)
            accepted += max(0, min(p + j, N) - committed)
            if j < size:
                rejected, committed = p + j, p + j + 1
            else:
                committed = p + size + 1  # the bonus at p + size
                if p + size < drafted:  # immediate pruning of its draft
                    if matches[p + size]:
                        accepted += 1
                    else:
                        rejected = p + size
                else:  # the bonus takes the position being drafted
                    drafted, moved = committed, True
            if committed >= N:
                discarded += sum(1 for b in blocks if b[2] >= 0)
                return t, used, discarded, accepted
        if rejected is not None:
            for b in blocks:
                if b[2] >= 0:
                    discarded += 1
                    if not b[4]:
                        stale[b[2]] = min(b[3], t + cancel)  # busy until its (aborted) reply is read
            blocks.clear()
            free_stale()
            drafted = committed
            if probe:  # the target's next token, with no drafts
                blocks.append([committed, 0, UNSENT, INF, False])
            if fast:
                mism = np.flatnonzero(~match) if mism is None else mism
                t, committed, u, d, a = _dsi_jump(t, committed, mism, lat, k, V, N, nsteps, throttled)
                drafted, used, discarded, accepted = committed, used + u, discarded + d, accepted + a
        restart = rejected is not None or moved  # a step under way is abandoned (interrupted)
        if not blocks or rejected is not None:
            start = committed
        dispatch()
        if mid and not restart:
            continue  # the step goes on
        busy = False
        awaiting = sum(1 for b in blocks if not b[4])
        if drafted < N and (not blocks if si else awaiting < ahead):
            if not stepped or restart:
                origin, ticks = t, 0
            busy = True


def simulate(
    algorithm: str,
    latencies: Latencies,
    acceptance: float,
    lookahead: int = 5,
    verifiers: int = 1,
    new_tokens: int = 100,
    seed: int = 0,
    trials: int = 100,
    cancel_latency: float = 0.0,
    max_blocks_ahead: int | None = None,
    nonsi_thread: bool = False,
    drafter_layers: int = 1,
    fast: bool = True,
) -> SimulationResult:
    """Monte Carlo latency of one algorithm ("nonsi", "si", "dsi") over `trials` seeded trials.

    si ignores `verifiers` (it uses one). cancel_latency: a preempted verifier is free only that long
    after the rejection (or when its forward ends, if sooner). max_blocks_ahead: dsi drafts while fewer blocks
    than this await replies (default V + 1, as the coordinator). nonsi_thread: on every rejection dsi also
    sends a block of zero drafts at once (the paper's non-SI thread; runtime.nonsi_thread), so
    the target's next token never waits for k drafts. drafter_layers = L > 1: replies are also read at
    L - 1 evenly spaced points inside each drafter step (the coordinator's interruptible drafting; the
    emulated backend has 8 slices), and a step whose position is rejected or taken by a bonus is dropped
    there; 1 = only between steps. fast=False: event by event (for tests)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
    if not 0.0 <= acceptance <= 1.0 or min(lookahead, verifiers, new_tokens, trials, drafter_layers) < 1:
        raise ValueError("need 0 <= acceptance <= 1 and lookahead, verifiers, tokens, trials >= 1")
    k, V, N = int(lookahead), int(verifiers), int(new_tokens)
    if algorithm == "nonsi":
        lat = np.full(trials, nonsi_latency(latencies, N))
        return SimulationResult("nonsi", k, V, N, float(lat[0]), 0.0, lat, 0.0, 0.0, 0.0)
    match = _draws(acceptance, N, seed, trials)
    nm, ahead = _next_mismatch(match), V + 1 if max_blocks_ahead is None else int(max_blocks_ahead)
    rows = [
        _trial(
            algorithm == "si",
            latencies,
            nm[i].tolist(),
            match[i],
            k,
            V,
            N,
            ahead,
            cancel_latency,
            fast,
            nonsi_thread,
            int(drafter_layers),
        )
        for i in range(trials)
    ]
    lat, used, disc, acc = (np.array(x, dtype=float) for x in zip(*rows))
    se = float(lat.std(ddof=1) / math.sqrt(trials)) if trials > 1 else 0.0
    return SimulationResult(
        algorithm,
        k,
        1 if algorithm == "si" else V,
        N,
        float(lat.mean()),
        se,
        lat,
        float(acc.sum() / max(used.sum(), 1)),
        float(used.mean()),
        float(disc.mean()),
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
    """The latency of ONE given draw (match[p]: does the draft at position p match?), e.g. the exact
    draws of an emulated run, so that model and machine are compared on the same luck."""
    match = np.asarray(match, dtype=bool)[None, :]
    N = match.shape[1]
    if algorithm == "nonsi":
        return nonsi_latency(latencies, N)
    nm = _next_mismatch(match)
    return _trial(
        algorithm == "si",
        latencies,
        nm[0].tolist(),
        match[0],
        int(lookahead),
        int(verifiers),
        N,
        int(verifiers) + 1,
        0.0,
        False,
        nonsi_thread,
        int(drafter_layers),
    )[0]


def nonsi_latency(latencies: Latencies, new_tokens: int) -> float:
    """Plain decoding: the prefill yields token 0, then one target forward per token."""
    return latencies.target_ttft + (new_tokens - 1) * latencies.target_tpot


def si_expected_latency(
    latencies: Latencies, acceptance: float, lookahead: int, new_tokens: int, exact: bool = True
) -> float:
    """Expected si latency under the simulator's rules.

    Token 0 is committed at max(target TTFT, drafter TTFT) (the reply is read after the drafter's prefill).
    Each later round drafts kk = min(k, tokens left) tokens (kk * Dc), verifies them (Tv) and commits j + 1
    tokens with probability a^j (1 - a) for j < kk, or kk + 1 with probability a^kk.
    exact=True: the expectation by recursion over the tokens left, f(n) = kk Dc + Tv + sum_i P(i) f(n - i),
      exact for the short last round and the first (for k = 1 the block [0] from the drafter's prefill is
      verified for its bonus only, when token 0's draft matched).
    exact=False: the paper's renewal formula, N - 1 tokens at (1 - a^(k+1)) / (1 - a) tokens per round
      of k Dc + Tv. It ignores the overshoot of the last round, k = 1's first round and the shorter rounds
      within k tokens of the end; the error is at most k Dc + Tv + k (k+1) / 2 Dc (checked on a grid)."""
    k, N, a = int(lookahead), int(new_tokens), float(acceptance)
    Dc, Tv = latencies.drafter_tpot, latencies.target_tpot
    start = max(latencies.target_ttft, latencies.drafter_ttft)
    if N <= 1:
        return start
    if not exact:
        return start + (N - 1) * (k * Dc + Tv) / sum(a**i for i in range(k + 1))
    f = np.zeros(N + k + 1)  # f[n + k + 1] = expected time to commit n more tokens; f(<=0) = 0
    for n in range(1, N):
        kk = min(k, n)
        p = np.append(a ** np.arange(kk) * (1 - a), a**kk)  # P(commit 1 .. kk + 1 tokens)
        prev = f[n + k - kk : n + k + 1][::-1]  # f(n-1), ..., f(n-kk-1)
        f[n + k + 1] = kk * Dc + Tv + float(p @ prev)
    fn = lambda n: f[n + k + 1]
    if k == 1:
        return start + a * (Tv + fn(N - 2)) + (1 - a) * fn(N - 1)
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
    lookaheads=range(1, 21),
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
    lookaheads=range(1, 21),
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
    "[--trials 200] [--nonsi-thread] [--drafter-layers L] [--cancel-latency S] [--json]"
)
OPTIONS = [
    ("--target-tpot", float, True, "target seconds per token"),
    ("--target-ttft", float, False, "target prefill seconds (default: target TPOT)"),
    ("--drafter-ttft", float, False, "drafter prefill seconds (default: c * target TTFT)"),
    ("--acceptance", float, True, "per-token acceptance rate a"),
    ("--lookahead", int, True, "drafts per verification, k"),
    ("--verifiers", int, True, "target servers for dsi, V (si uses one)"),
    ("--tokens", int, True, "new tokens per generation, N"),
    ("--seed", int, False, "seed of the draws (default 0)"),
    ("--trials", int, False, "Monte Carlo trials (default 200)"),
    ("--drafter-layers", int, False, "also read replies between L drafter layers (default 1)"),
    ("--cancel-latency", float, False, "seconds until a preempted verifier is free (default 0)"),
]


def main(argv: list[str] | None = None) -> int:
    """Expected latencies of nonsi, si and dsi for one setting, their ratios and the minimum verifiers."""
    ap = argparse.ArgumentParser(prog="python -m dsi_mpi simulate", usage=USAGE, description=main.__doc__)
    for flag, kind, required, text in OPTIONS:
        ap.add_argument(flag, type=kind, required=required, help=text)
    drafter = ap.add_mutually_exclusive_group(required=True)
    drafter.add_argument("--drafter-tpot", type=float, help="drafter seconds per token")
    drafter.add_argument("--c", type=float, help="drafter TPOT as a fraction of the target's")
    ap.add_argument("--nonsi-thread", action="store_true", help="dsi sends a zero-draft block per rejection")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.set_defaults(seed=0, trials=200, drafter_layers=1, cancel_latency=0.0)
    args = ap.parse_args(argv)
    c = args.c if args.c is not None else args.drafter_tpot / args.target_tpot
    a, k, V, N = args.acceptance, args.lookahead, args.verifiers, args.tokens
    try:
        lat = latencies_from_c(c, args.target_tpot, args.target_ttft, args.drafter_ttft)
        extra = dict(
            nonsi_thread=args.nonsi_thread, drafter_layers=args.drafter_layers, cancel_latency=args.cancel_latency
        )
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
        "si_expected_exact": si_expected_latency(lat, a, k, N),
        "si_expected_paper": si_expected_latency(lat, a, k, N, exact=False),
        "speedup_si_over_nonsi": t["nonsi"] / t["si"],
        "speedup_dsi_over_si": t["si"] / t["dsi"],
        "speedup_dsi_over_nonsi": t["nonsi"] / t["dsi"],
        "min_verifiers_without_queueing": min_verifiers_without_queueing(c, k),
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
    print(f"  si expected {out['si_expected_exact']:.4f} s, paper's formula {out['si_expected_paper']:.4f} s")
    for key in ("speedup_si_over_nonsi", "speedup_dsi_over_si", "speedup_dsi_over_nonsi"):
        print(f"  {key.replace('_', ' ')}: {out[key]:.3f}x")
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
        latencies.drafter_ttft, latencies.drafter_tpot, latencies.target_ttft + extra, latencies.target_tpot + extra
    )
    return lat, groups * stages
