"""`dsi-mpi report RESULTS.h5 [--json]`: per-algorithm summary, or one JSON record per (algorithm, prompt).

Speedups are ratios of total wall time over the same prompts in the same job (outputs are identical, so
the token counts are too); a ratio above 1 means the algorithm is faster than the baseline named.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np

USAGE = "python -m dsi_mpi report RESULTS.h5 [--json]"


def _per_algorithm(records: list[dict]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["algorithm"], []).append(r)
    summary = {}
    for algorithm, recs in groups.items():
        tokens = sum(len(r["tokens"]) for r in recs)
        wall = sum(r["wall_s"] for r in recs)
        compared = sum(r.get("compared", 0) for r in recs)
        summary[algorithm] = {
            "prompts": len(recs), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall if wall else math.nan,
            "ms_per_token": 1e3 * wall / tokens if tokens else math.nan,
            "ttft_ms": 1e3 * float(np.mean([r["ttft_s"] for r in recs])),
            "acceptance": sum(r.get("accepted", 0) for r in recs) / compared if compared else math.nan,
            "tasks_sent": sum(r.get("tasks_sent", 0) for r in recs),
            "tasks_used": sum(r.get("tasks_used", 0) for r in recs),
            "tasks_stale": sum(r.get("tasks_stale", 0) for r in recs),
            "prompt_indices": sorted(r["prompt_index"] for r in recs),
        }
    for algorithm, s in summary.items():
        for base in ("nonsi", "si"):
            other = summary.get(base)
            same_prompts = other is not None and other["prompt_indices"] == s["prompt_indices"]
            s[f"speedup_vs_{base}"] = other["wall_s"] / s["wall_s"] if same_prompts and s["wall_s"] else math.nan
    return summary


def summary_table(records: list[dict]) -> str:
    """A fixed-width table, one line per algorithm."""
    summary = _per_algorithm(records)
    header = (f"{'algorithm':<12}{'prompts':>8}{'tokens':>8}{'tok/s':>9}{'ms/tok':>9}{'TTFT ms':>9}"
              f"{'vs nonsi':>10}{'vs si':>8}{'accept':>8}{'tasks sent/used/stale':>23}")
    lines = [header, "-" * len(header)]
    order = [a for a in ("nonsi", "si", "hf_assisted", "hf_prompt_lookup", "dsi") if a in summary] + \
            [a for a in summary if a not in ("nonsi", "si", "hf_assisted", "hf_prompt_lookup", "dsi")]
    for algorithm in order:
        s = summary[algorithm]
        tasks = f"{s['tasks_sent']}/{s['tasks_used']}/{s['tasks_stale']}" if s["tasks_sent"] else "-"
        lines.append(f"{algorithm:<12}{s['prompts']:>8}{s['tokens']:>8}{s['tokens_per_s']:>9.1f}"
                     f"{s['ms_per_token']:>9.2f}{s['ttft_ms']:>9.1f}{_ratio(s['speedup_vs_nonsi']):>10}"
                     f"{_ratio(s['speedup_vs_si']):>8}{_num(s['acceptance']):>8}{tasks:>23}")
    return "\n".join(lines)


def _ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}x"


def _num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def json_records(records: list[dict]) -> list[dict]:
    """The per-(algorithm, prompt) records, with task and cancellation tables summarised."""
    out = []
    for r in records:
        tasks, cancels = r["tasks"], r["cancellations"]
        rec = {k: v for k, v in r.items() if k not in ("tasks", "cancellations", "events")}
        rec["tokens_computed"] = int(tasks["computed"].sum()) if len(tasks) else 0
        rec["tokens_reused"] = int(tasks["reused"].sum()) if len(tasks) else 0
        rec["cancellations"] = len(cancels)
        rec["median_busy_after_reject_s"] = float(np.median(cancels["busy_after_s"])) if len(cancels) else None
        rec["acceptance"] = rec["accepted"] / rec["compared"] if rec.get("compared") else None
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
        print(summary_table(records))
        for sentence in explain(records, meta):
            print(f"- {sentence}")
    return 0
