"""The paper's time model at a file's measured inputs: what it predicts for the file's own setting, so that a
run's measured speedups can be set against the model's (report, explain, the planner's calibration,
analysis/). The inputs are measured here, from records, one estimator each; the model runs in
dsi_mpi/timemodel/.

The time model's inputs (`time_model_inputs`), one estimator each:
- target_ttft_s: median over nonsi's prompts of its first-token time (the target's prefill).
- target_tpot_s: median over nonsi's prompts of (wall - ttft) / (tokens - 1), the authors' TPOT; without
  nonsi, verify_forward_s.
- verify_forward_s: median forward time of the applied verification tasks that carried drafts (si + dsi).
- verify_by_tokens_s: T(n), per block size n = drafts + 1, the median forward time of the applied tasks of si
  and dsi that carried n - 1 drafts (n = 1: blocks of no drafts and plain runs, per token computed). On a CPU
  T grows with n unless the backend keeps it flat (the packed backend); the simulator prices each block at it.
- drafter_tpot_s: mean duration of the drafter's completed one-token draft steps (DRAFT events) of si, else
  dsi. Events time each forward alone: prefills, interrupted steps and catch-ups (steps that also fed the
  committed tokens the drafter lacked, DRAFT_CATCH_UP) are their own event kinds, and si drafts without
  serving replies in between (dsi's steps also serve replies between the drafter's layers), so this is a
  clean per-token time, the d that adaptive speculation prices (decoding/adaptive.py); draft_s / drafted
  would count catch-ups and interrupted steps as well. A file without one-token steps falls back to the
  catch-ups (an upper bound).
- drafter_ttft_s: median drafter prefill time (si + dsi).
- acceptance: si's acceptance (else dsi's): i.i.d. acceptance is the model's assumption, and si's is not
  shaped by dsi's timing.
- message_s: median over si's applied verification tasks (else dsi's) of (reply_s - sent_s - busy_s) / 2:
  what one message costs the rank that sleeps in its poller waiting for it (the back-off's wake-up plus the
  transfer; the paper's model has none). The simulator charges it only to a waiting rank (an idle verifier,
  rank 0 waiting for a reply: dsi_mpi/timemodel/virtual.py). si's trips, because in si both ends wait every time:
  dsi's rank 0 often reads a reply between two of the drafter's layers, a delay the simulator plays out
  itself (measured: with 7 verifiers, pooling dsi's trips made the calibrated si prediction 17% slower than
  with 1, for the same si run).
- c = drafter_tpot_s / target_tpot_s (the paper's ratio of per-token latencies).
How the model is run at these inputs: dsi_mpi/timemodel/inputs.py.

The time model's predictions for a file (`predictions`) use that file's own setting (`run_setting`): each
algorithm's lookahead and dsi's verifier count as its records say, the median number of tokens generated
per prompt, runtime.nonsi_thread and the drafter's layers (root attribute `drafter`, field `layers`; 1 if
absent). Predicted speedups are ratios of predicted latencies, as measured ones are of wall times.
"""

from __future__ import annotations

import json
import math

import numpy as np

from dsi_mpi.io.records import Event, Outcome
from dsi_mpi.reporting import metrics as mt
from dsi_mpi.timemodel.inputs import predicted_latencies

NAN = math.nan


def _median(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.median(values)) if values else NAN


def _durations(records: list[dict], kind: Event) -> list[float]:
    return [float(e["t1"] - e["t0"]) for r in records for e in r["events"] if e["kind"] == kind]


def time_model_inputs(by: dict[str, list[dict]]) -> dict | None:
    """The time model's inputs as measured (see the module's docstring); None where one is unknown."""
    spec = by.get("si", []) + by.get("dsi", [])
    if not spec:
        return None
    clean = by.get("si") or by["dsi"]
    plain = [r for r in by.get("nonsi", []) if len(r["tokens"]) > 1]
    verify = mt.verifications(mt.tasks_table(spec))
    waited = mt.verifications(mt.tasks_table(clean))
    trips = (waited["reply_s"] - waited["sent_s"] - waited["busy_s"]) / 2 if len(waited) else np.zeros(0)
    by_tokens = _forward_by_tokens(mt.tasks_table(spec))
    verify = verify["busy_s"][~np.isnan(verify["busy_s"])] if len(verify) else verify
    drafts = _durations(clean, Event.DRAFT) or _durations(clean, Event.DRAFT_CATCH_UP)
    m = {
        "verify_forward_s": float(np.median(verify)) if len(verify) else NAN,
        "drafter_tpot_s": float(np.mean(drafts)) if drafts else NAN,
        "drafter_ttft_s": _median([r.get("drafter_prefill_s", NAN) for r in spec]),
        "acceptance": mt.acceptance(clean),
        "message_s": _median(np.maximum(trips, 0.0).tolist()) if len(trips) else 0.0,
    }
    if plain:
        m["target_ttft_s"] = _median([r["ttft_s"] for r in plain])
        m["target_tpot_s"] = _median([(r["wall_s"] - r["ttft_s"]) / (len(r["tokens"]) - 1) for r in plain])
    else:
        m["target_ttft_s"] = _median([r["ttft_s"] for r in spec])
        m["target_tpot_s"] = m["verify_forward_s"]
    if any(math.isnan(v) for v in m.values()) or m["target_tpot_s"] <= 0 or m["drafter_tpot_s"] <= 0:
        return None
    m["c"] = m["drafter_tpot_s"] / m["target_tpot_s"]
    m["verify_by_tokens_s"] = by_tokens
    return m


def _forward_by_tokens(tasks: np.ndarray | None) -> dict[int, float]:
    """{n: median seconds of an applied forward of a block of n tokens} (see the module docstring)."""
    if tasks is None or not len(tasks):
        return {}
    used = tasks[(tasks["outcome"] == Outcome.USED) & (tasks["base"] > 0) & ~np.isnan(tasks["busy_s"])]
    out = {}
    for drafts in sorted(set(used["n_drafts"].tolist())):
        rows = used[used["n_drafts"] == drafts]
        seconds = rows["busy_s"] / np.maximum(rows["computed"], 1) if drafts == 0 else rows["busy_s"]
        out[int(drafts) + 1] = float(np.median(seconds))
    return out


def _drafter_layers(meta: dict) -> int:
    try:
        return max(1, int(json.loads(meta["drafter"]).get("layers", 1)))
    except (KeyError, TypeError, ValueError, AttributeError):
        return 1


def run_setting(meta: dict, records: list[dict]) -> dict:
    """What the time model is run at for this file (see the module's docstring)."""
    shape = mt.job_shape(meta, records)
    by = mt.by_algorithm(records)
    k = {a: int(by[a][0]["lookahead"]) if by.get(a) else 0 for a in ("si", "dsi")}
    k = {a: v or shape["lookahead"] for a, v in k.items()}  # 0: adaptive (files without it: the config's k)
    dsi_verifiers = max((int(r.get("verifiers", 0)) for r in by.get("dsi", [])), default=0)
    return {
        "lookahead": k,
        "verifiers": dsi_verifiers or shape["verifiers"],
        "tokens": max(1, int(np.median([len(r["tokens"]) for r in records]))) if records else 1,
        "nonsi_thread": shape["nonsi_thread"],
        "drafter_layers": _drafter_layers(meta),
    }


def predictions(meta: dict, records: list[dict]) -> dict | None:
    """The measured inputs, the setting, the predicted latencies and the predicted speedups (si and dsi vs
    nonsi, dsi vs si) of one file; None where the time model's inputs are unknown."""
    m = time_model_inputs(mt.by_algorithm(records))
    if m is None:
        return None
    setting = run_setting(meta, records)
    latency = predicted_latencies(m, setting)
    speedups = {f"{a}_vs_{b}": latency[b] / latency[a] for a, b in (("si", "nonsi"), ("dsi", "nonsi"), ("dsi", "si"))}
    return {"inputs": m, "setting": setting, "latency": latency, "speedup": speedups}
