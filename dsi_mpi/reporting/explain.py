"""Why a run was fast or slow: figures measured from the records, and sentences built from them.

Every sentence is computed from the data (and from the paper's time model, dsi_mpi.simulator, fed with
the measured latencies): a sentence whose inputs are missing is left out rather than guessed. The
figures (`algorithm_metrics`, `compare`) also feed `dsi-mpi plot table`.
"""
from __future__ import annotations

import json
import math
import tomllib

import numpy as np

from dsi_mpi.io.records import ABORTED, DRAFT, STALE_RESULT, USED, VERIFY, VERIFY_ABORTED

NAN = math.nan
BUSY_KINDS = (VERIFY, VERIFY_ABORTED)
STALE_OUTCOMES = (STALE_RESULT, ABORTED)
SAME = 0.1          # ratios within 10% of 1 are called "the same"


# ---------------------------------------------------------------- figures
def job_shape(meta: dict, records: list[dict]) -> dict:
    """lookahead k, verifier ranks V and max_new_tokens N, from the stored config, else from the records."""
    shape = {"lookahead": 0, "verifiers": 0, "max_new_tokens": 0}
    try:
        cfg = tomllib.loads(meta.get("config_toml", ""))
        shape["lookahead"] = int(cfg["decoding"]["lookahead"])
        shape["max_new_tokens"] = int(cfg["decoding"]["max_new_tokens"])
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        pass
    try:
        shape["verifiers"] = len(json.loads(meta["ranks"])) - 1
    except (KeyError, TypeError, ValueError):
        pass
    tasks = [r["tasks"] for r in records if len(r["tasks"])]
    events = [r["events"] for r in records if len(r["events"])]
    if shape["verifiers"] < 1:
        ranks = [int(t["verifier"].max()) for t in tasks] + [int(e["rank"].max()) for e in events]
        shape["verifiers"] = max(ranks, default=1)
    if shape["lookahead"] < 1:
        shape["lookahead"] = max((int(t["n_drafts"].max()) for t in tasks), default=1) or 1
    if shape["max_new_tokens"] < 1:
        shape["max_new_tokens"] = max((len(r["tokens"]) for r in records), default=1)
    return shape


def by_algorithm(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["algorithm"], []).append(r)
    return groups


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


def algorithm_metrics(recs: list[dict], verifiers: int) -> dict:
    """Totals over the prompts of one algorithm; NaN where the records cannot say (e.g. no events)."""
    tokens = sum(len(r["tokens"]) for r in recs)
    wall = sum(r["wall_s"] for r in recs)
    compared = sum(r.get("compared", 0) for r in recs)
    tasks = [r["tasks"] for r in recs if len(r["tasks"])]
    tasks = np.concatenate(tasks) if tasks else None
    has_events = any(len(r["events"]) for r in recs)
    busy = sum(verifier_busy(r, verifiers).sum() for r in recs)
    m = {"prompts": len(recs), "tokens": tokens, "wall_s": wall,
         "tokens_per_s": tokens / wall if wall else NAN,
         "ms_per_token": 1e3 * wall / tokens if tokens else NAN,
         "ttft_ms": 1e3 * float(np.mean([r["ttft_s"] for r in recs])) if recs else NAN,
         "acceptance": sum(r.get("accepted", 0) for r in recs) / compared if compared else NAN,
         "accepted_per_verification": NAN, "verifier_utilisation": NAN, "stale_fraction": NAN,
         "tasks_sent": sum(r.get("tasks_sent", 0) for r in recs),
         "tasks_stale": sum(r.get("tasks_stale", 0) for r in recs),
         "blocks_unsent": sum(r.get("blocks_unsent", 0) for r in recs),
         "rejections": sum(r.get("rejections", 0) for r in recs),
         "prompt_indices": sorted(r["prompt_index"] for r in recs)}
    if tasks is not None:
        applied = int(((tasks["outcome"] == USED) & (tasks["n_drafts"] > 0)).sum())
        m["accepted_per_verification"] = sum(r.get("accepted", 0) for r in recs) / applied if applied else NAN
        spent = np.nan_to_num(tasks["busy_s"])
        if spent.sum() > 0:
            m["stale_fraction"] = float(spent[np.isin(tasks["outcome"], STALE_OUTCOMES)].sum() / spent.sum())
    if has_events and wall > 0:
        m["verifier_utilisation"] = float(busy / (verifiers * wall))
    return m


def speedup(by: dict[str, list[dict]], algorithm: str, base: str) -> float:
    """base wall time / algorithm wall time over the prompts both ran (above 1: algorithm faster)."""
    if algorithm not in by or base not in by:
        return NAN
    mine = {r["prompt_index"]: r["wall_s"] for r in by[algorithm]}
    theirs = {r["prompt_index"]: r["wall_s"] for r in by[base]}
    common = sorted(set(mine) & set(theirs))
    total = sum(mine[i] for i in common)
    return sum(theirs[i] for i in common) / total if common and total > 0 else NAN


def per_prompt_speedups(by: dict[str, list[dict]], algorithm: str, base: str) -> list[float]:
    mine = {r["prompt_index"]: r["wall_s"] for r in by.get(algorithm, [])}
    theirs = {r["prompt_index"]: r["wall_s"] for r in by.get(base, [])}
    return [theirs[i] / mine[i] for i in sorted(set(mine) & set(theirs)) if mine[i] > 0]


def compare(records: list[dict], verifiers: int) -> dict[str, dict]:
    """algorithm_metrics per algorithm, plus speedups against nonsi and si on the same prompts."""
    by = by_algorithm(records)
    out = {}
    for algorithm, recs in by.items():
        out[algorithm] = algorithm_metrics(recs, verifiers)
        for base in ("nonsi", "si"):
            out[algorithm][f"speedup_vs_{base}"] = speedup(by, algorithm, base)
    return out


def measured_inputs(by: dict[str, list[dict]]) -> dict | None:
    """The time model's inputs as measured: target latencies from nonsi (else from verification forwards),
    drafter latencies from si's drafting events (else dsi's), acceptance from si (else dsi). None if unknown."""
    spec = by.get("si", []) + by.get("dsi", [])
    if not spec:
        return None
    out = {}
    plain = [r for r in by.get("nonsi", []) if len(r["tokens"]) > 1]
    tasks = np.concatenate([r["tasks"] for r in spec])
    verify = tasks[(tasks["n_drafts"] > 0) & (tasks["outcome"] == USED) & ~np.isnan(tasks["busy_s"])]
    out["verify_s"] = float(np.median(verify["busy_s"])) if len(verify) else NAN
    if plain:
        out["target_ttft"] = float(np.median([r["ttft_s"] for r in plain]))
        out["target_tpot"] = float(np.median([(r["wall_s"] - r["ttft_s"]) / (len(r["tokens"]) - 1) for r in plain]))
    else:
        out["target_ttft"] = float(np.median([r["ttft_s"] for r in spec]))
        out["target_tpot"] = out["verify_s"]
    # si's drafter steps are the clean measurement: dsi's also handle replies between the drafter's layers
    drafts = [e["t1"] - e["t0"] for r in (by.get("si") or spec) for e in r["events"] if e["kind"] == DRAFT]
    if drafts:
        out["drafter_tpot"] = float(np.mean(drafts))
    else:
        n = sum(r.get("drafted", 0) - 1 for r in spec)
        out["drafter_tpot"] = sum(r.get("draft_s", 0.0) for r in spec) / n if n > 0 else NAN
    out["drafter_ttft"] = float(np.median([r.get("drafter_prefill_s", 0.0) for r in spec]))
    source = by.get("si") or by["dsi"]
    compared = sum(r.get("compared", 0) for r in source)
    out["acceptance"] = sum(r.get("accepted", 0) for r in source) / compared if compared else NAN
    values = [out[k] for k in ("target_ttft", "target_tpot", "drafter_tpot", "drafter_ttft", "acceptance")]
    if any(math.isnan(v) for v in values) or out["target_tpot"] <= 0 or out["drafter_tpot"] <= 0:
        return None
    out["c"] = out["drafter_tpot"] / out["target_tpot"]
    return out


# ---------------------------------------------------------------- sentences
def explain(records: list[dict], meta: dict) -> list[str]:
    """Sentences saying why the run was fast or slow, each computed from the records (+ the time model)."""
    records = [_as_dict(r) for r in records]
    if not records:
        return []
    shape = job_shape(meta, records)
    k, V = shape["lookahead"], shape["verifiers"]
    N = max(1, int(np.median([len(r["tokens"]) for r in records])))
    by, figures = by_algorithm(records), compare(records, V)
    m = measured_inputs(by)
    model = _model(m, k, V, N) if m else None
    sentences = [_inputs(m, k, V, figures), _si(m, model, figures, k), _dsi(m, model, figures, V),
                 _dsi_slower(m, model, figures, k, V, N), _utilisation(m, figures, k, V), _stale(by, figures),
                 _ttft(figures), _verify_cost(m), _per_prompt(by), _lookahead(m, model, k, V, N), _other(figures)]
    return [s for s in sentences if s]


def _as_dict(r) -> dict:
    """Accept RunRecord objects as well as read_results dicts."""
    if isinstance(r, dict):
        return r
    d = {"algorithm": r.algorithm, "prompt_index": r.prompt_index, "prompt_id": r.prompt_id,
         "tokens": list(r.tokens), "commit_times": list(r.commit_times), "tasks": r.task_table(),
         "cancellations": r.cancel_table(), "events": r.event_table()}
    d.update(r.scalars())
    return d


def _model(m: dict, k: int, V: int, N: int) -> dict:
    """Predicted latencies at the measured inputs: nonsi, si (exact expectation), dsi (Monte Carlo)."""
    from dsi_mpi.simulator import Latencies, nonsi_latency, si_expected_latency, simulate
    lat = Latencies(m["drafter_ttft"], m["drafter_tpot"], m["target_ttft"], m["target_tpot"])
    a = min(max(m["acceptance"], 0.0), 1.0)
    return {"lat": lat, "a": a, "nonsi": nonsi_latency(lat, N), "si": si_expected_latency(lat, a, k, N),
            "dsi": simulate("dsi", lat, a, k, V, N, seed=0, trials=100).mean_latency}


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _inputs(m, k, V, figures) -> str | None:
    if not m:
        return None
    runs = [a for a in ("si", "dsi") if a in figures and not math.isnan(figures[a]["accepted_per_verification"])]
    runs = ", ".join(f"{a} {figures[a]['accepted_per_verification']:.2f}" for a in runs)
    return (f"measured: target {1e3 * m['target_tpot']:.2f} ms per token (prefill {1e3 * m['target_ttft']:.1f} ms), "
            f"drafter {1e3 * m['drafter_tpot']:.2f} ms per token, so c = {m['c']:.2f}; acceptance "
            f"{m['acceptance']:.2f}; k = {k}, {V} verifier rank(s)"
            + (f"; drafts accepted per applied verification: {runs}" if runs else ""))


def _si(m, model, figures, k) -> str | None:
    """si's gain per iteration: (1 - a^(k+1)) / (1 - a) tokens for k c + 1 target forwards."""
    if not model or "si" not in figures:
        return None
    a, c = model["a"], m["c"]
    tokens = k + 1 if a >= 1 else (1 - a ** (k + 1)) / (1 - a)
    cost = k * c + 1
    predicted = model["nonsi"] / model["si"]
    measured = figures["si"]["speedup_vs_nonsi"]
    head = (f"drafter latency is {c:.2f} of the target's and acceptance {a:.2f}: with k = {k} an si iteration "
            f"costs {cost:.2f} target forwards and commits {tokens:.2f} tokens on average, so the time model "
            f"predicts si at {_x(predicted)} nonsi's speed")
    if math.isnan(measured):
        return head
    head += f"; measured {_x(measured)}"
    if measured < 1:
        if tokens < cost:
            return head + (f". si was slower than nonsi because each iteration commits fewer tokens ({tokens:.2f}) "
                           f"than it costs target forwards ({cost:.2f})")
        return head + (f". si was slower than nonsi although the time model predicts a gain: the loss "
                       f"({_x(measured / predicted)} of the prediction) comes from costs outside the model")
    return head


def _dsi(m, model, figures, V) -> str | None:
    if not model or "dsi" not in figures:
        return None
    pred_n, pred_s = model["nonsi"] / model["dsi"], model["si"] / model["dsi"]
    text = f"with {V} verifier(s) the time model predicts dsi at {_x(pred_n)} nonsi's speed and {_x(pred_s)} si's"
    got_n, got_s = figures["dsi"]["speedup_vs_nonsi"], figures["dsi"]["speedup_vs_si"]
    got = [f"{_x(v)} {b}'s" for v, b in ((got_n, "nonsi"), (got_s, "si")) if not math.isnan(v)]
    if got:
        text += "; measured " + " and ".join(got)
        if not math.isnan(got_n) and pred_n > 1:
            text += f" ({(got_n - 1) / (pred_n - 1):.0%} of the predicted gain over nonsi)"
    return text


def _dsi_slower(m, model, figures, k, V, N) -> str | None:
    """dsi behind nonsi: after a rejection our coordinator sends nothing until k new drafts exist (the
    paper keeps a non-SI thread instead); the time model with such a thread (restart_probe) says what it buys."""
    d = figures.get("dsi")
    if not model or not d or not d["speedup_vs_nonsi"] < 1:
        return None
    from dsi_mpi.simulator import simulate
    probe = simulate("dsi", model["lat"], model["a"], k, V, N, seed=0, trials=100, restart_probe=True)
    return (f"dsi was slower than nonsi ({_x(d['speedup_vs_nonsi'])}): after each of its {d['rejections']} "
            f"rejections ({d['rejections'] / max(1, d['tokens']):.0%} of its tokens) no block is verified until "
            f"k = {k} new drafts exist ({1e3 * k * m['drafter_tpot']:.1f} ms, {k * m['c']:.2f} target forwards); "
            f"with the paper's non-SI thread (a block of no drafts sent at each rejection) the time model predicts "
            f"dsi at {_x(model['nonsi'] / probe.mean_latency)} nonsi's speed instead of "
            f"{_x(model['nonsi'] / model['dsi'])}")


def _utilisation(m, figures, k, V) -> str | None:
    d = figures.get("dsi")
    if not d or math.isnan(d["verifier_utilisation"]):
        return None
    u = d["verifier_utilisation"]
    text = f"dsi kept {u * V:.1f} of {V} verifier(s) busy on average (utilisation {u:.0%})"
    if m:
        from dsi_mpi.simulator import min_verifiers_without_queueing
        need = min_verifiers_without_queueing(m["c"], k)
        text += (f"; the drafter forms a block every k c = {k * m['c']:.2f} target forwards, so "
                 f"ceil(1 / (k c)) = {need} verifier(s) keep up with it")
        text += (f" and the other {V - need} cannot be kept busy by drafting alone" if V > need else
                 f" but the job had only {V}: blocks wait for a free verifier" if V < need else "")
    return text


def _stale(by, figures) -> str | None:
    d = figures.get("dsi")
    if not d or math.isnan(d["stale_fraction"]):
        return None
    text = (f"{d['stale_fraction']:.0%} of dsi's verifier busy time went to stale work ({d['tasks_stale']} of "
            f"{d['tasks_sent']} tasks ended stale or aborted after a rejection; {d['blocks_unsent']} block(s) "
            f"were dropped before any verifier started them)")
    cancels = [r["cancellations"] for r in by["dsi"] if len(r["cancellations"])]
    if cancels:
        c = np.concatenate(cancels)
        text += (f"; a cancelled forward kept its verifier busy a median {1e3 * np.median(c['busy_after_s']):.2f} ms "
                 f"after the rejection, {int(c['aborted'].sum())} of {len(c)} were stopped mid-forward")
    return text


def _ttft(figures) -> str | None:
    base = figures.get("nonsi")
    if not base:
        return None
    parts = []
    for a in ("si", "dsi"):
        if a not in figures:
            continue
        mine, ratio = figures[a]["ttft_ms"], figures[a]["ttft_ms"] / base["ttft_ms"]
        cap = base["wall_s"] / (figures[a]["prompts"] * mine / 1e3) if base["prompts"] == figures[a]["prompts"] else NAN
        how = ("as long as nonsi's" if abs(ratio - 1) <= SAME else f"{_x(ratio)} nonsi's")
        part = (f"{a}'s first token took {how} ({mine:.1f} vs {base['ttft_ms']:.1f} ms, the target's prefill), "
                f"{mine * figures[a]['prompts'] / 1e3 / figures[a]['wall_s']:.0%} of its wall time")
        if not math.isnan(cap) and mine * figures[a]["prompts"] / 1e3 >= 0.1 * figures[a]["wall_s"]:
            part += f", which alone caps its speedup over nonsi at {_x(cap)}"
        parts.append(part)
    return "; ".join(parts) or None


def _verify_cost(m) -> str | None:
    if not m or math.isnan(m["verify_s"]) or m["verify_s"] == m["target_tpot"]:   # equal: no nonsi to compare
        return None
    ratio = m["verify_s"] / m["target_tpot"]
    how = "about as long as" if abs(ratio - 1) <= SAME else f"{_x(ratio)}"
    return (f"a verification forward took a median {1e3 * m['verify_s']:.2f} ms, {how} a plain decoding step "
            f"({1e3 * m['target_tpot']:.2f} ms); the time model charges one step for either")


def _per_prompt(by) -> str | None:
    parts = []
    for a, b in (("dsi", "nonsi"), ("dsi", "si"), ("si", "nonsi")):
        s = per_prompt_speedups(by, a, b)
        if s:
            parts.append(f"{a} beat {b} on {sum(v > 1 for v in s)} of {len(s)} prompts "
                         f"(per-prompt speedup {min(s):.2f}x to {max(s):.2f}x)")
    return "; ".join(parts) or None


def _lookahead(m, model, k, V, N) -> str | None:
    """The k the time model prefers at the measured c and acceptance, and what it would gain."""
    if not model:
        return None
    from dsi_mpi.simulator import best_lookahead
    parts = []
    for a, n in (("si", 1), ("dsi", V)):
        best, t = best_lookahead(a, model["lat"], model["a"], N, verifiers=n, lookaheads=range(1, 21), trials=20)
        now = model[a] if a == "si" else best_lookahead(a, model["lat"], model["a"], N, verifiers=n,
                                                        lookaheads=[k], trials=20)[1]
        parts.append(f"k = {k} for {a} (the k used here)" if best == k else
                     f"k = {best} for {a} (predicted {_x(now / t)} faster than k = {k} used here)")
    return "at these latencies and acceptance the time model's best lookahead is " + " and ".join(parts)


def _other(figures) -> str | None:
    parts = [f"{a} ran at {_x(f['speedup_vs_nonsi'])} nonsi's speed" for a, f in figures.items()
             if a not in ("nonsi", "si", "dsi") and not math.isnan(f["speedup_vs_nonsi"])]
    return "; ".join(parts) or None
