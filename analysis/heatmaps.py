"""Figure-1 style heatmaps (Timor et al.) from our simulator: who is faster, over drafter speed and accuracy.

usage: python -m analysis.heatmaps --out DIR [--tokens 1000] [--trials N] [--quick]
                                   [--verifiers needed|best] [--nonsi-thread] [--drafter-layers L] [--jobs J]

Each pixel is one (c, a): c = drafter TPOT / target TPOT, a = acceptance rate. Every algorithm runs at its
own best lookahead k in 1..20 (si by its exact expectation, dsi by simulation with one seed for every
candidate, so candidates see the same drafts). dsi uses V = min(7, ceil(1/(k c))) verifiers for each k
(--verifiers needed, the paper's SP <= 7), or the best V in 1..that (--verifiers best, what the planner
does). Latencies are in target forwards: target TPOT = TTFT = 1, drafter TPOT = c, drafter TTFT = c.
By default the coordinator reads replies only between drafter steps and has no non-SI thread (the rules
the simulator was specified with); --nonsi-thread and --drafter-layers L model those two coordinator
features (see simulator.simulate: nonsi_thread, drafter_layers); they are much slower to simulate.
A speedup of X over Y is Y's latency / X's latency, so > 1 means X is faster.
Writes DIR/heatmaps.png (four panels) and DIR/heatmaps.csv (one row per pixel).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from dsi_mpi.timemodel import simulator as S

C_GRID = [0.01, 0.05] + [round(0.1 + 0.05 * i, 2) for i in range(19)]  # 0.01, 0.05, 0.1, ..., 1.0
A_GRID = [0.01] + [round(0.05 * i, 2) for i in range(1, 20)] + [0.99]  # 0.01, 0.05, ..., 0.95, 0.99
QUICK = dict(c=[0.05, 0.45, 1.0], a=[0.05, 0.5, 0.95], tokens=40, trials=2, lookaheads=(1, 2, 4, 8))
PANELS = [
    ("si_over_nonsi", "Speedup of SI over non-SI\n(non-SI latency / SI latency)"),
    ("dsi_over_si", "Speedup of DSI over SI\n(SI latency / DSI latency)"),
    ("dsi_over_nonsi", "Speedup of DSI over non-SI\n(non-SI latency / DSI latency)"),
    ("dsi_over_best", "Speedup of DSI over the faster of SI and non-SI\n(min(SI, non-SI) / DSI)"),
]
FIELDS = [
    "c",
    "a",
    "nonsi",
    "si",
    "si_k",
    "dsi",
    "dsi_se",
    "dsi_k",
    "dsi_v",
    "si_over_nonsi",
    "dsi_over_si",
    "dsi_over_nonsi",
    "dsi_over_best",
]


def pixel(job) -> dict:
    """All three algorithms at their best settings for one (c, a)."""
    c, a, tokens, trials, lookaheads, search_v, seed, extra = job
    lat = S.latencies_from_c(c, 1.0, 1.0)
    nonsi = S.nonsi_latency(lat, tokens)
    si_k, si = S.best_lookahead("si", lat, a, tokens, lookaheads=lookaheads)
    best = None
    for k in lookaheads:
        top = min(7, S.min_verifiers_without_queueing(c, k))
        for V in range(1, top + 1) if search_v else [top]:
            r = S.simulate("dsi", lat, a, k, V, tokens, seed, trials, **extra)
            if best is None or r.mean_latency < best.mean_latency:
                best = r
    return dict(
        c=c,
        a=a,
        nonsi=nonsi,
        si=si,
        si_k=si_k,
        dsi=best.mean_latency,
        dsi_se=best.std_error,
        dsi_k=best.lookahead,
        dsi_v=best.verifiers,
        si_over_nonsi=nonsi / si,
        dsi_over_si=si / best.mean_latency,
        dsi_over_nonsi=nonsi / best.mean_latency,
        dsi_over_best=min(si, nonsi) / best.mean_latency,
    )


def _ticks(lo: float, hi: float) -> list[float]:
    """Colour-bar speedups spaced at least a tenth of the (log) range apart, 1 always included."""
    gap = max(np.log2(max(hi, 1.01) / min(lo, 0.99)) / 10, 0.1)
    picked = [1.0]
    for t in (1.1, 1.25, 1.5, 2, 3, 5, 10, 20, 40, 80):
        if t <= hi and np.log2(t / picked[-1]) >= gap:
            picked.append(t)
    for t in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2):
        if t >= lo and np.log2(picked[0] / t) >= gap:
            picked.insert(0, t)
    return picked


def plot(rows: list[dict], cs, as_, path: Path, subtitle: str) -> None:
    """Four panels; colours on a log scale centred on 1 (blue: the named algorithm is faster, red:
    slower), each pixel labelled with its speedup, a black contour where the speedup crosses 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    fig, axes = plt.subplots(2, 2, figsize=(18, 15.5), constrained_layout=True)
    size = 10 if len(cs) <= 5 else 5
    for ax, (key, title) in zip(axes.flat, PANELS):
        value = {(r["c"], r["a"]): r[key] for r in rows}
        grid = np.array([[value[c, a] for c in cs] for a in as_])
        lo, hi = float(grid.min()), float(grid.max())
        logs = np.log2(grid)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=min(logs.min(), -0.05), vmax=max(logs.max(), 0.05))
        im = ax.imshow(logs, origin="lower", cmap="RdBu", norm=norm, aspect="auto")
        if lo < 1 < hi:
            ax.contour(logs, levels=[0.0], colors="black", linewidths=1.2)
        for (i, j), v in np.ndenumerate(grid):
            dark = abs(norm(logs[i, j]) - 0.5) > 0.35
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=size, color="white" if dark else "black")
        ax.set_xticks(range(len(cs)), [f"{c:g}" for c in cs], rotation=90, fontsize=8)
        ax.set_yticks(range(len(as_)), [f"{a:g}" for a in as_], fontsize=8)
        ax.set_xlabel("drafter latency c (drafter TPOT / target TPOT)")
        ax.set_ylabel("acceptance rate a")
        ax.set_title(f"{title}\nmin {lo:.3f}, max {hi:.3f} (black line: 1)", fontsize=10)
        ticks = _ticks(lo, hi)
        bar = fig.colorbar(im, ax=ax, shrink=0.85, ticks=np.log2(ticks))
        bar.ax.set_yticklabels([f"{t:g}x" for t in ticks])
    fig.suptitle(subtitle, fontsize=11)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None) -> int:
    usage = __doc__.split("\n\n")[1].strip().removeprefix("usage: ")
    ap = argparse.ArgumentParser(usage=usage, description="Figure-1 style heatmaps of the simulator")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--tokens", type=int, default=1000, help="new tokens per generation (paper: 1000)")
    ap.add_argument("--trials", type=int, default=10, help="dsi Monte Carlo trials per setting")
    ap.add_argument("--quick", action="store_true", help="3 x 3 grid, 100 tokens, k <= 8 (for tests)")
    ap.add_argument(
        "--verifiers",
        choices=["needed", "best"],
        default="needed",
        help="dsi V per k: min(7, ceil(1/(k c))), or the best V up to that",
    )
    ap.add_argument("--nonsi-thread", action="store_true", help="dsi sends a zero-draft block per rejection")
    ap.add_argument("--drafter-layers", type=int, default=1, help="replies also read inside drafter steps")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cs, as_, tokens, trials, ks = C_GRID, A_GRID, args.tokens, args.trials, range(1, 21)
    if args.quick:
        cs, as_, tokens, ks = QUICK["c"], QUICK["a"], QUICK["tokens"], QUICK["lookaheads"]
        trials = min(trials, QUICK["trials"])
    extra = dict(nonsi_thread=args.nonsi_thread, drafter_layers=args.drafter_layers)
    jobs = [(c, a, tokens, trials, ks, args.verifiers == "best", args.seed, extra) for c in cs for a in as_]
    t0 = time.perf_counter()
    if args.jobs > 1:
        with Pool(args.jobs) as pool:
            rows = pool.map(pixel, jobs, chunksize=1)
    else:
        rows = [pixel(job) for job in jobs]
    seconds = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "heatmaps.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(
        rows,
        cs,
        as_,
        args.out / "heatmaps.png",
        f"N = {tokens} tokens, k <= {max(ks)} per algorithm, dsi V: {args.verifiers} (<= 7), "
        f"non-SI thread {'on' if args.nonsi_thread else 'off'}, drafter layers {args.drafter_layers}, "
        f"{trials} dsi trials, seed {args.seed}",
    )
    for key, _ in PANELS:
        values = [r[key] for r in rows]
        print(f"{key:15s} min {min(values):.3f}  max {max(values):.3f}")
    print(f"{len(rows)} pixels in {seconds:.1f} s -> {args.out}/heatmaps.png, heatmaps.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
