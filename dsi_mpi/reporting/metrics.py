"""Every figure computed from run records, each by ONE estimator (report, explain, plots, the planner and
analysis/benchmark.py all call these; nothing else computes a figure).

A record is the dict `dsi_mpi.io.results.read_results` yields (`RunRecord.as_dict()` gives the same shape).

Figures per algorithm (`algorithm_metrics`), totals over its prompts:
- tokens_per_s, ms_per_token: total tokens / total wall time, and its inverse.
- ttft_ms: mean time to the first token.
- acceptance: accepted drafts / drafts compared with the target (summed over prompts).
- accepted_tokens, recovered_tokens, bonus_tokens (vLLM's words): drafts accepted; target tokens that
  replaced a rejected draft (one per rejection); every other target token (the prefill's first token, the
  token after a fully accepted block, a block of no drafts).
- mean_acceptance_length (as vLLM logs it): 1 + accepted drafts / applied verifications that carried drafts,
  i.e. the tokens one target verification yields; accepted_per_verification is the same minus 1.
- acceptance_histogram (gpt-fast's accept counts): entry j = applied verifications whose result let exactly
  j drafts stand (a full block's extra token also judges the next block's first draft, so j runs to k + 1).
  Needs the tasks table's `accepted` column (files written before it have none: empty histogram).
- itl_p50_ms, itl_p90_ms, itl_p99_ms: percentiles of the inter-token latency, the differences of consecutive
  `commit_times` of each prompt, pooled over prompts (tokens committed together count 0; the first
  token's wait is ttft, not a delta).
- verifier_utilisation: verifier forward time within the runs' wall time / (verifier ranks x wall time).
- stale_fraction: share of verifier busy time spent on tasks whose result was stale or abandoned.
- outside_forwards_share, outside_forwards_ms_per_verification: the wall time in which no rank ran a model
  forward (no drafter prefill, draft step or verification forward of any rank covers it: messages, the
  polling back-off's overshoot, layer callbacks, bookkeeping), as a share of the wall time and per applied
  verification. Only si and dsi record forwards (NaN for the baselines, which run inside one call).

Speedup of A over B (`speedup`): on the matched prompts, i.e. the intersection of the prompt indices both
algorithms completed, (sum of B's wall times) / (sum of A's wall times); above 1: A is faster. The outputs
are identical (lossless), so this is also the ratio of per-token latencies on those prompts.

The time model's inputs and predictions: dsi_mpi/reporting/time_model.py.

What the figures stand on (`rank_table`, `shared_gpus`): GPUs that several ranks shared (same host, same
physical GPU); there si and dsi are a functional check, not a speed (report.job_notes says so under a table).

Job throughput, from where and when each prompt ran: dsi_mpi/reporting/throughput.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import tomllib

from dsi_mpi.io.records import Event, Outcome

NAN = math.nan
BASELINES = ("nonsi", "si")  # speedups are reported against these
ORDER = ("nonsi", "si", "hf_assisted", "hf_prompt_lookup", "dsi")  # display order
BUSY_KINDS = (Event.VERIFY, Event.VERIFY_ABORTED)
FORWARD_KINDS = (Event.DRAFTER_PREFILL, Event.DRAFT, Event.DRAFT_CATCH_UP, Event.DRAFT_INTERRUPTED, *BUSY_KINDS)
STALE_OUTCOMES = (Outcome.STALE_RESULT, Outcome.ABANDONED)


def ordered(names) -> list[str]:
    """Algorithms in display order (known ones first, the rest sorted)."""
    return [a for a in ORDER if a in names] + sorted(a for a in names if a not in ORDER)


def by_algorithm(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["algorithm"], []).append(r)
    return groups


def job_shape(meta: dict, records: list[dict]) -> dict:
    """lookahead k (0: adaptive), verifier ranks V, max_new_tokens N and runtime.nonsi_thread, from the stored
    config, else from the records."""
    shape = {"lookahead": None, "verifiers": 0, "max_new_tokens": 0, "nonsi_thread": True}
    try:
        cfg = tomllib.loads(meta.get("config_toml", ""))
        shape["nonsi_thread"] = bool(cfg.get("runtime", {}).get("nonsi_thread", True))
        k = cfg["decoding"]["lookahead"]
        shape["lookahead"] = 0 if k == "adaptive" else int(k)  # 0: adaptive
        shape["max_new_tokens"] = int(cfg["decoding"]["max_new_tokens"])
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError):
        pass
    try:
        ranks = json.loads(meta["ranks"])
        first = [r for r in ranks if r.get("instance", 0) == ranks[-1].get("instance", 0)]  # one instance's
        shape["verifiers"] = len(first) - 1
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        pass
    tasks = [r["tasks"] for r in records if len(r["tasks"])]
    events = [r["events"] for r in records if len(r["events"])]
    if shape["verifiers"] < 1:  # no rank table: the most verifiers any run used or any table names
        ranks = [int(t["verifier"].max()) for t in tasks] + [int(e["rank"].max()) for e in events]
        shape["verifiers"] = max(ranks + [int(r.get("verifiers", 1)) for r in records], default=1)
    if shape["lookahead"] is None:  # not in the config ("auto", or a file without one): the longest block
        shape["lookahead"] = max((int(t["n_drafts"].max()) for t in tasks), default=1) or 1
    if shape["max_new_tokens"] < 1:
        shape["max_new_tokens"] = max((len(r["tokens"]) for r in records), default=1)
    return shape


def rank_table(meta: dict) -> list[dict]:
    """The root attribute `ranks` (one dict per rank), [] where a file has none."""
    try:
        ranks = json.loads(meta["ranks"])
    except (KeyError, TypeError, ValueError):
        return []
    return ranks if isinstance(ranks, list) else []


def shared_gpus(ranks: list[dict]) -> list[dict]:
    """GPUs that several ranks ran on (same host, same `gpu`: the physical GPU, whatever index each rank called
    it): [{host, gpu, ranks}]. Without MPS such ranks take turns on the GPU, so no two forwards there ran at
    once: si and dsi figures of such a job are a functional check, not a speed."""
    groups: dict[tuple, list[int]] = {}
    for r in ranks:
        if r.get("gpu"):
            groups.setdefault((r.get("host", ""), r["gpu"]), []).append(int(r["rank"]))
    return [{"host": h, "gpu": g, "ranks": sorted(rs)} for (h, g), rs in groups.items() if len(rs) > 1]


def verifier_busy(rec: dict, verifiers: int) -> np.ndarray:
    """Seconds each verifier rank 1..V spent in forwards (verify or verify_aborted) within the run's wall time."""
    busy = np.zeros(verifiers)
    ev = rec["events"]
    if not len(ev):
        return busy
    ev = ev[np.isin(ev["kind"], BUSY_KINDS) & (ev["rank"] >= 1) & (ev["rank"] <= verifiers)]
    spans = np.clip(ev["t1"], 0, rec["wall_s"]) - np.clip(ev["t0"], 0, rec["wall_s"])
    np.add.at(busy, ev["rank"] - 1, np.maximum(spans, 0))
    return busy


def outside_forwards_s(rec: dict) -> float:
    """Seconds of the run's wall time that no model forward of any rank covers (NaN without events)."""
    ev = rec["events"]
    ev = ev[np.isin(ev["kind"], FORWARD_KINDS)] if len(ev) else ev
    if not len(ev):
        return NAN
    wall, covered, reach = rec["wall_s"], 0.0, 0.0
    for t0, t1 in sorted(zip(np.clip(ev["t0"], 0, wall).tolist(), np.clip(ev["t1"], 0, wall).tolist())):
        if t1 > reach:
            covered += t1 - max(t0, reach)
            reach = t1
    return float(wall - covered)


def tasks_table(recs: list[dict]) -> np.ndarray | None:
    tables = [r["tasks"] for r in recs if len(r["tasks"])]
    return np.concatenate(tables) if tables else None


def _total(recs: list[dict], name: str) -> int:
    return sum(r.get(name, 0) for r in recs)


def ratio(num: float, den: float) -> float:
    """num / den, NaN where den is 0."""
    return num / den if den else NAN


def acceptance(recs: list[dict]) -> float:
    return ratio(_total(recs, "accepted"), _total(recs, "compared"))


def verifications(tasks: np.ndarray | None) -> np.ndarray:
    """Applied verification tasks that carried drafts."""
    if tasks is None:
        return np.zeros(0)
    return tasks[(tasks["outcome"] == Outcome.USED) & (tasks["n_drafts"] > 0)]


def acceptance_histogram(recs: list[dict]) -> list[int]:
    """Entry j: applied verifications that let exactly j drafts stand (empty without the `accepted` column)."""
    tasks = verifications(tasks_table(recs))
    if not len(tasks) or "accepted" not in tasks.dtype.names:
        return []
    counts = tasks["accepted"][tasks["accepted"] >= 0]
    return np.bincount(counts).tolist() if len(counts) else []


def lookahead_histogram(recs: list[dict]) -> tuple[list[int], int]:
    """Entry k: applied tasks after the prefill that carried k drafts (k = 0: plain runs, adaptive speculation's
    choice where drafts did not pay), and the tokens those k = 0 tasks computed: how much a run speculated at
    all, which its speedup depends on before anything else."""
    tasks = tasks_table(recs)
    used = tasks[(tasks["outcome"] == Outcome.USED) & (tasks["base"] > 0)] if tasks is not None else []
    if not len(used):
        return [], 0
    return np.bincount(used["n_drafts"]).tolist(), int(used["computed"][used["n_drafts"] == 0].sum())


def prompt_ms_per_token(rec: dict) -> float:
    """One record's wall time per generated token, in ms (algorithm_metrics' ms_per_token of one prompt)."""
    return ratio(1e3 * rec["wall_s"], len(rec["tokens"]))


def rank_utilisation(rec: dict, verifiers: int) -> np.ndarray:
    """Share of one run's wall time each verifier rank 1..V spent in forwards (NaN without a wall time)."""
    busy = verifier_busy(rec, verifiers)
    return busy / rec["wall_s"] if rec["wall_s"] > 0 else np.full(verifiers, NAN)


def inter_token_ms(recs: list[dict]) -> np.ndarray:
    """Differences of consecutive commit times of each prompt, pooled, in ms."""
    deltas = [np.diff(np.asarray(r["commit_times"], dtype=float)) for r in recs if len(r["commit_times"]) > 1]
    return 1e3 * np.concatenate(deltas) if deltas else np.zeros(0)


def algorithm_metrics(recs: list[dict], verifiers: int) -> dict:
    """Totals over the prompts of one algorithm; NaN where the records cannot say (e.g. no events)."""
    tokens = sum(len(r["tokens"]) for r in recs)
    wall = sum(r["wall_s"] for r in recs)
    accepted, rejections = _total(recs, "accepted"), _total(recs, "rejections")
    tasks = tasks_table(recs)
    applied = len(verifications(tasks))
    itl = inter_token_ms(recs)
    m = {
        "prompts": len(recs),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": ratio(tokens, wall),
        "ms_per_token": ratio(1e3 * wall, tokens),
        "ttft_ms": 1e3 * float(np.mean([r["ttft_s"] for r in recs])) if recs else NAN,
        "acceptance": acceptance(recs),
        "accepted_tokens": accepted,
        "recovered_tokens": rejections,
        "bonus_tokens": tokens - accepted - rejections if _total(recs, "compared") else 0,
        "accepted_per_verification": ratio(accepted, applied),
        "mean_acceptance_length": 1 + ratio(accepted, applied),
        "acceptance_histogram": acceptance_histogram(recs),
        "verifier_utilisation": NAN,
        "stale_fraction": NAN,
        "tasks_sent": _total(recs, "tasks_sent"),
        "tasks_used": _total(recs, "tasks_used"),
        "tasks_stale": _total(recs, "tasks_stale"),
        "blocks_unsent": _total(recs, "blocks_unsent"),
        "rejections": rejections,
        "prompt_indices": sorted(r["prompt_index"] for r in recs),
    }
    for q in (50, 90, 99):
        m[f"itl_p{q}_ms"] = float(np.percentile(itl, q)) if len(itl) else NAN
    if tasks is not None:
        spent = np.nan_to_num(tasks["busy_s"])
        if spent.sum() > 0:
            m["stale_fraction"] = float(spent[np.isin(tasks["outcome"], STALE_OUTCOMES)].sum() / spent.sum())
    if any(len(r["events"]) for r in recs) and wall > 0:
        busy = sum(verifier_busy(r, verifiers).sum() for r in recs)
        m["verifier_utilisation"] = float(busy / (verifiers * wall))
    outside = sum(outside_forwards_s(r) for r in recs) if recs else NAN
    m["outside_forwards_share"] = ratio(outside, wall)
    m["outside_forwards_ms_per_verification"] = ratio(1e3 * outside, applied)
    return m


def _walls(by: dict[str, list[dict]], algorithm: str) -> dict[int, float]:
    return {r["prompt_index"]: r["wall_s"] for r in by.get(algorithm, [])}


def speedup(by: dict[str, list[dict]], algorithm: str, base: str) -> float:
    """base wall time / algorithm wall time, summed over the matched prompts (above 1: algorithm faster)."""
    mine, theirs = _walls(by, algorithm), _walls(by, base)
    common = sorted(set(mine) & set(theirs))
    total = sum(mine[i] for i in common)
    return sum(theirs[i] for i in common) / total if common and total > 0 else NAN


def per_prompt_speedups(by: dict[str, list[dict]], algorithm: str, base: str) -> list[float]:
    mine, theirs = _walls(by, algorithm), _walls(by, base)
    return [theirs[i] / mine[i] for i in sorted(set(mine) & set(theirs)) if mine[i] > 0]


def compare(records: list[dict], verifiers: int) -> dict[str, dict]:
    """algorithm_metrics per algorithm, plus speedup_vs_nonsi and speedup_vs_si on matched prompts."""
    by = by_algorithm(records)
    out = {}
    for algorithm, recs in by.items():
        out[algorithm] = algorithm_metrics(recs, verifiers)
        for base in BASELINES:
            out[algorithm][f"speedup_vs_{base}"] = speedup(by, algorithm, base)
    return out


def stale_work(recs: list[dict]) -> dict:
    """Cancellations of stale tasks: how many, the share stopped mid-forward, the median time a verifier
    stayed busy after the rejection."""
    tables = [r["cancellations"] for r in recs if len(r["cancellations"])]
    c = np.concatenate(tables) if tables else None
    return {
        "cancellations": 0 if c is None else len(c),
        "aborted": 0 if c is None else int(c["aborted"].sum()),
        "aborted_fraction": NAN if c is None else float(c["aborted"].mean()),
        "median_busy_after_reject_s": NAN if c is None else float(np.median(c["busy_after_s"])),
    }


def cache_reuse(recs: list[dict]) -> dict:
    """Per task of a block with drafts: share of its prefix kept in the verifier's cache, tokens computed."""
    tasks = tasks_table(recs)
    if tasks is None:
        return {"cache_reuse": NAN, "computed_per_task": NAN, "tokens_computed": 0, "tokens_reused": 0}
    blocks = tasks[tasks["n_drafts"] > 0]
    return {
        "cache_reuse": float(blocks["base"].sum() / blocks["start"].sum()) if len(blocks) else NAN,
        "computed_per_task": float(blocks["computed"].mean()) if len(blocks) else NAN,
        "tokens_computed": int(tasks["computed"].sum()),
        "tokens_reused": int(tasks["reused"].sum()),
    }


def stage_hops(recs: list[dict]) -> np.ndarray:
    """Pipelined groups: seconds from a stage's end to the next stage's start on the same task, for every
    consecutive pair that both computed (the activation message's hop, plus the wait for the next stage
    to finish what it was doing). Each stage's clock offset is applied, so this is on rank 0's axis."""
    hops = []
    for r in recs:
        st = r.get("stages")
        if st is None or not len(st):
            continue
        st = np.sort(st, order=["task_id", "stage"])
        same = (st["task_id"][1:] == st["task_id"][:-1]) & (st["status"][1:] == 0) & (st["status"][:-1] == 0)
        hops.append((st["start_s"][1:] - st["end_s"][:-1])[same])
    return np.concatenate(hops) if hops else np.zeros(0)


def stage_overlap_s(rec: dict) -> float:
    """Pipelined groups: seconds during which two stages of one group computed different tasks at once."""
    st = rec.get("stages")
    if st is None or not len(st):
        return 0.0
    st = st[st["status"] == 0]
    total = 0.0
    for verifier in np.unique(st["verifier"]):
        mine = st[st["verifier"] == verifier]
        for i in range(len(mine)):
            for j in range(i + 1, len(mine)):
                a, b = mine[i], mine[j]
                if a["task_id"] != b["task_id"] and a["stage"] != b["stage"]:
                    total += max(0.0, min(a["end_s"], b["end_s"]) - max(a["start_s"], b["start_s"]))
    return total
