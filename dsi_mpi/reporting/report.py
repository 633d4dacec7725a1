"""`dsi-mpi report RESULTS.h5 [--json]`: per-algorithm summary, or one JSON record per (algorithm, prompt).

Every figure comes from dsi_mpi.reporting.metrics (its docstring defines each one). Speedups are ratios of
total wall time over the matched prompts (those both algorithms completed); above 1 means the algorithm is
faster than the baseline named.
"""

from __future__ import annotations

import argparse
import json
import math

from dsi_mpi.reporting.metrics import (
    acceptance,
    acceptance_histogram,
    by_algorithm,
    cache_reuse,
    compare,
    job_shape,
    lookahead_histogram,
    ordered,
    rank_table,
    shared_gpus,
    stale_work,
)
from dsi_mpi.reporting.throughput import throughput

USAGE = "python -m dsi_mpi report RESULTS.h5 [--json]"


# Each figure of metrics.compare that a table shows, with its one header and format (the metrics docstring
# defines the figure): the summary table below and `plot table` both print them under these names.
FIGURES = {
    "prompts": ("prompts", "d"),
    "tokens": ("tokens", "d"),
    "tokens_per_s": ("tok/s", ".1f"),
    "ms_per_token": ("ms/tok", ".2f"),
    "ttft_ms": ("TTFT ms", ".1f"),
    "speedup_vs_nonsi": ("vs nonsi", "x"),
    "speedup_vs_si": ("vs si", "x"),
    "acceptance": ("accept", ".3f"),
    "accepted_per_verification": ("acc/verif", ".2f"),
    "mean_acceptance_length": ("acc.len", ".2f"),
    "itl_p50_ms": ("p50 ms", ".2f"),
    "itl_p90_ms": ("p90 ms", ".2f"),
    "itl_p99_ms": ("p99 ms", ".2f"),
    "verifier_utilisation": ("verifier util.", ".1%"),
    "stale_fraction": ("stale work", ".1%"),
    "outside_forwards_share": ("outside fwd", ".1%"),
    "outside_forwards_ms_per_verification": ("outside ms/verif", ".2f"),
    "tasks_stale": ("stale tasks", "d"),
    "blocks_unsent": ("blocks never sent", "d"),
}
SUMMARY = (  # the columns of the summary table (`make run`, `report`), then tasks sent/used/stale
    "prompts tokens tokens_per_s ms_per_token ttft_ms speedup_vs_nonsi speedup_vs_si acceptance "
    "mean_acceptance_length itl_p50_ms itl_p90_ms itl_p99_ms"
).split()


def cell(figure: str, value) -> str:
    """A figure as a table shows it: its FIGURES format, "-" where the records cannot say (NaN)."""
    fmt = FIGURES[figure][1]
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.3f}x" if fmt == "x" else format(value, fmt)


def summary_table(records: list[dict], meta: dict | None = None) -> str:
    """A fixed-width table, one line per algorithm: speed, speedups on matched prompts, acceptance, mean
    acceptance length, inter-token latency percentiles, and tasks sent/used/stale; under it the job's notes
    (`job_notes`), si and dsi marked * where ranks shared a GPU."""
    meta = meta or {}
    figures = compare(records, job_shape(meta, records)["verifiers"])
    shared = shared_gpus(rank_table(meta))
    width = {f: max(9, len(FIGURES[f][0]) + 2) for f in SUMMARY}
    header = f"{'algorithm':<12}" + "".join(f"{FIGURES[f][0]:>{width[f]}}" for f in SUMMARY)
    header += f"{'tasks sent/used/stale':>23}"
    lines = [header, "-" * len(header)]
    for algorithm in ordered(figures):
        s = figures[algorithm]
        tasks = f"{s['tasks_sent']}/{s['tasks_used']}/{s['tasks_stale']}" if s["tasks_sent"] else "-"
        name = algorithm + ("*" if shared and algorithm in FUNCTIONAL_ONLY else "")
        lines.append(f"{name:<12}" + "".join(f"{cell(f, s[f]):>{width[f]}}" for f in SUMMARY) + f"{tasks:>23}")
    return "\n".join(lines + job_notes(meta))


FUNCTIONAL_ONLY = ("si", "dsi")  # algorithms whose speed needs the drafter and verifiers to run at once


def job_notes(meta: dict) -> list[str]:
    """What the table's figures stand on that the results file says elsewhere: ranks whose compiled backend
    fell back to eager (root attribute `backends`), and GPUs several ranks shared (metrics.shared_gpus)."""
    try:
        backends = json.loads(meta.get("backends") or "[]")
    except (TypeError, ValueError):
        backends = []
    notes = [
        f"note: rank {b.get('rank')} ({b.get('role')}) ran EAGER: its compiled backend fell back ({b['fallback']})"
        for b in backends
        if isinstance(b, dict) and b.get("fallback")
    ]
    for group in shared_gpus(rank_table(meta)):
        notes.append(
            f"* FUNCTIONAL CHECK, not a speed: ranks {', '.join(map(str, group['ranks']))} shared one GPU "
            f"({group['gpu']} on {group['host']}), taking turns on it: si and dsi ran nothing in parallel there"
        )
    return notes


def throughput_lines(records: list[dict]) -> list[str]:
    """The job's generated tokens/s, overall and per instance (reporting.throughput); none for files written
    before prompts recorded where they ran."""
    t = throughput(records)
    if t is None:
        return []
    lines = [f"throughput: {t['tokens_per_s']:.1f} generated tok/s ({t['tokens']} tokens in {t['wall_s']:.2f} s)"]
    if len(t["instances"]) > 1:
        for instance, m in t["instances"].items():
            lines.append(
                f"  instance {instance}: {m['tokens_per_s']:.1f} tok/s, {m['prompts']} prompts, "
                f"{m['tokens']} tokens, busy {100 * m['utilisation']:.0f}%"
            )
    return lines


def histogram_lines(records: list[dict]) -> list[str]:
    """Per speculative algorithm: its tasks by drafts sent (how much it speculated), and how many applied
    verifications let exactly j drafts stand."""
    lines = []
    for algorithm, recs in by_algorithm(records).items():
        sent, plain_tokens = lookahead_histogram(recs)
        if sent:
            cells = ", ".join(f"{k}: {n}" for k, n in enumerate(sent) if n)
            lines.append(
                f"{algorithm} tasks by drafts sent ({sum(sent)} after the prefills; 0: plain runs, "
                f"{plain_tokens} tokens): {cells}"
            )
        counts = acceptance_histogram(recs)
        if counts:
            cells = ", ".join(f"{j}: {n}" for j, n in enumerate(counts))
            lines.append(f"{algorithm} verifications by drafts accepted ({sum(counts)} in all): {cells}")
    return lines


def json_records(records: list[dict]) -> list[dict]:
    """The per-(algorithm, prompt) records, with task and cancellation tables summarised."""
    out = []
    for r in records:
        rec = {k: v for k, v in r.items() if k not in ("tasks", "cancellations", "events", "stages")}
        reuse, stale = cache_reuse([r]), stale_work([r])
        rec["tokens_computed"], rec["tokens_reused"] = reuse["tokens_computed"], reuse["tokens_reused"]
        rec["cancellations"] = stale["cancellations"]
        busy = stale["median_busy_after_reject_s"]
        rec["median_busy_after_reject_s"] = None if math.isnan(busy) else busy
        rec["acceptance"] = None if math.isnan(acceptance([r])) else acceptance([r])
        rec["acceptance_histogram"] = acceptance_histogram([r])
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    from dsi_mpi.io.results import read_results

    parser = argparse.ArgumentParser(prog="dsi-mpi report", usage=USAGE, description=__doc__)
    parser.add_argument("results")
    parser.add_argument("--json", action="store_true", help="one JSON record per (algorithm, prompt)")
    args = parser.parse_args(argv)
    try:
        meta, records = read_results(args.results)
    except (OSError, ValueError) as err:
        print(f"dsi-mpi report: {err}")
        return 2
    if args.json:
        print(json.dumps(json_records(records), indent=1))
    else:
        from dsi_mpi.reporting.explain import explain

        print(f"{args.results}: {len(records)} records, git {meta.get('git_commit', '?')}")
        print(summary_table(records, meta))
        for line in throughput_lines(records) + histogram_lines(records):
            print(line)
        for sentence in explain(records, meta):
            print(f"- {sentence}")
    return 0
