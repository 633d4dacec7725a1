"""`dsi-mpi plot`: pictures and a table that show why a run was fast or slow.

usage:
  python -m dsi_mpi plot RESULTS.h5 --out DIR      (the default set: gantt of the first prompt, table, distributions)
  python -m dsi_mpi plot gantt RESULTS.h5 --out DIR [--prompt I] [--algorithm A]
  python -m dsi_mpi plot table RESULTS.h5 [RESULTS2.h5 ...] --out PREFIX      (writes PREFIX.md, PREFIX.csv)
  python -m dsi_mpi plot distributions RESULTS.h5 [RESULTS2.h5 ...] --out DIR

gantt: one PNG per (prompt, algorithm): what every rank did over time (drafting, verification forwards,
waits, rejections, cancellations) above the committed-token curve. table: per file and algorithm the
speed, the speedups on the same prompts, acceptance, verifier utilisation and stale work. distributions:
per-prompt latency and speedups across prompts. Each function returns the data it drew, for tests.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

from dsi_mpi.reporting import explain as ex
from dsi_mpi.reporting import metrics as mt
from dsi_mpi.reporting import report as rp
from dsi_mpi.reporting.gantt import CURVE_COLORS, gantt, pyplot

USAGE = "\n       ".join(line.strip() for line in __doc__.split("\n\n")[1].splitlines()[1:])


# ---------------------------------------------------------------- table
TABLE = list(rp.FIGURES)  # every figure with a table name, under that name (report.FIGURES)
COLUMNS = ["file", "algorithm", *TABLE]


def _labels(paths: list[str]) -> list[str]:
    """File stems, or full paths where stems collide."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths)]


def table_rows(paths: list[str]) -> list[dict]:
    """One row per (file, algorithm): metrics.compare's figures, speedups on each file's own matched prompts."""
    from dsi_mpi.io.results import read_results

    rows = []
    for label, path in zip(_labels(paths), paths):
        meta, records = read_results(path)
        figures = mt.compare(records, mt.job_shape(meta, records)["verifiers"])
        for algorithm in mt.ordered(figures):
            rows.append({"file": label, "algorithm": algorithm} | figures[algorithm])
    return rows


def table(paths: list[str], out: str) -> list[dict]:
    """Write OUT.md (readable, with explain()'s sentences per file) and OUT.csv (one row per file, algorithm)."""
    from dsi_mpi.io.results import read_results

    rows = table_rows(paths)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    headers = ["file", "algorithm"] + [rp.FIGURES[f][0] for f in TABLE]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join([r["file"], r["algorithm"]] + [rp.cell(f, r[f]) for f in TABLE]) + " |" for r in rows]
    lines += [
        "",
        "Speedups: wall time of the baseline / wall time of the algorithm on the prompts both completed "
        "(above 1: faster). accept: accepted / compared drafts; acc/verif: drafts accepted per applied "
        "verification, acc.len the same plus 1 (mean acceptance length); p50/p90/p99: inter-token latency "
        "(differences of consecutive commit times). Verifier util.: share of the wall time verifier ranks spent "
        "in forwards, averaged over every verifier rank. Stale work: share of verifier busy time spent on tasks "
        "whose result was stale or whose forward was aborted.",
    ]
    for label, path in zip(_labels(paths), paths):
        meta, records = read_results(path)
        lines += ["", f"## Why: {label}", ""] + [f"- {s}" for s in ex.explain(records, meta)]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    with open(f"{out}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(["" if isinstance(r[k], float) and math.isnan(r[k]) else r[k] for k in COLUMNS])
    return rows


# ---------------------------------------------------------------- distributions
def distribution_data(paths: list[str]) -> dict:
    """Per-prompt ms/token per (file, algorithm) and per-prompt speedups (baseline wall / algorithm wall)."""
    from dsi_mpi.io.results import read_results

    latency, speedups = {}, {}
    several = len(paths) > 1
    for label, path in zip(_labels(paths), paths):
        by = mt.by_algorithm(read_results(path)[1])
        prefix = f"{label}: " if several else ""
        for algorithm in mt.ordered(by):
            runs = sorted(by[algorithm], key=lambda r: r["prompt_index"])
            latency[prefix + algorithm] = [mt.prompt_ms_per_token(r) for r in runs if r["tokens"]]
        for a, b in (("si", "nonsi"), ("dsi", "nonsi"), ("hf_assisted", "nonsi"), ("dsi", "si")):
            values = mt.per_prompt_speedups(by, a, b)
            if values:
                speedups[f"{prefix}{a} / {b}"] = values
    return {"per_token_ms": latency, "speedups": speedups}


def _box_strip(ax, groups: dict[str, list[float]]) -> None:
    """Box per group with every prompt as a jittered dot on top (few prompts stay visible)."""
    names = list(groups)
    ax.boxplot([groups[n] for n in names], widths=0.5, showfliers=False, medianprops={"color": "black"})
    jitter = np.random.default_rng(0)
    for i, n in enumerate(names, start=1):
        algorithm = n.split(": ")[-1].split(" / ")[0]
        ax.scatter(
            i + jitter.uniform(-0.12, 0.12, len(groups[n])),
            groups[n],
            s=16,
            alpha=0.75,
            zorder=3,
            color=CURVE_COLORS.get(algorithm, "#17becf"),
        )
    tilt = len(names) > 4
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20 if tilt else 0, ha="right" if tilt else "center")
    ax.grid(axis="y", alpha=0.3)


def distributions(paths: list[str], out: str) -> dict:
    """latency_per_token.png and speedups.png in directory `out`; returns the plotted values and paths."""
    plt = pyplot()
    data = distribution_data(paths)
    Path(out).mkdir(parents=True, exist_ok=True)
    data["paths"] = []
    for key, name, ylabel, title in (
        (
            "per_token_ms",
            "latency_per_token.png",
            "ms per token (wall time / tokens)",
            "per-token latency across prompts",
        ),
        (
            "speedups",
            "speedups.png",
            "speedup (baseline time / algorithm time)",
            "per-prompt speedup (above 1: faster than the baseline)",
        ),
    ):
        groups = data[key]
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) + 2), 4.5))
        _box_strip(ax, groups)
        if key == "speedups":
            ax.axhline(1.0, color="#d62728", linewidth=1, linestyle="--")
        n = max(len(v) for v in groups.values())
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}; {n} prompt(s)", fontsize=10)
        fig.tight_layout()
        fig.savefig(Path(out) / name, dpi=110)
        plt.close(fig)
        data["paths"].append(str(Path(out) / name))
    return data


# ---------------------------------------------------------------- command line
COMMANDS = ("gantt", "table", "distributions")


def default_set(path: str, out: str) -> list[str]:
    """Gantt charts of the first prompt, DIR/table.md + .csv, and the distributions, all into `out`."""
    from dsi_mpi.io.results import read_results

    records = read_results(path)[1]
    if not records:
        raise ValueError(f"{path} has no complete prompt")
    first = min(r["prompt_index"] for r in records)
    written = [d["path"] for d in gantt(path, out, prompt=first)]
    table([path], str(Path(out) / "table"))
    return written + [str(Path(out) / "table.md"), str(Path(out) / "table.csv")] + distributions([path], out)["paths"]


def _default_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dsi-mpi plot", usage=USAGE)
    parser.add_argument("results")
    parser.add_argument("--out", required=True, help="directory for every picture and the table")
    args = parser.parse_args(argv)
    try:
        written = default_set(args.results, args.out)
    except (OSError, ValueError) as err:
        print(f"dsi-mpi plot: {err}")
        return 2
    print("\n".join(written))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        return _default_main(argv)
    parser = argparse.ArgumentParser(prog="dsi-mpi plot", usage=USAGE, description=__doc__.split("\n\n")[2])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gantt", help="per-rank timeline PNG per (prompt, algorithm)")
    g.add_argument("results")
    g.add_argument("--out", required=True, help="directory for the PNGs")
    g.add_argument("--prompt", type=int, help="prompt index (default: every prompt)")
    g.add_argument("--algorithm", help="one algorithm (default: every algorithm)")
    for name, text in (("table", "PREFIX of PREFIX.md and PREFIX.csv"), ("distributions", "directory for the PNGs")):
        p = sub.add_parser(name)
        p.add_argument("results", nargs="+")
        p.add_argument("--out", required=True, help=text)
    args = parser.parse_args(argv)
    try:
        if args.command == "gantt":
            written = [d["path"] for d in gantt(args.results, args.out, args.prompt, args.algorithm)]
        elif args.command == "table":
            table(args.results, args.out)
            written = [f"{args.out}.md", f"{args.out}.csv"]
        else:
            written = distributions(args.results, args.out)["paths"]
    except (OSError, ValueError) as err:
        print(f"dsi-mpi plot: {err}")
        return 2
    for path in written:
        print(path)
    return 0
