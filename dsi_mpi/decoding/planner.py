"""`lookahead = "auto"` / `verifiers = "auto"`: measure the pair briefly, then ask the time model.

Calibration runs on the job's own ranks, models and first prompt, after one untimed pass: plain decoding
on verifier 1 gives the target's prefill and per-token latency; a short si run gives the drafter's
per-token latency, the verification forward time and the acceptance rate. The simulator then picks, from
those measurements, the best lookahead for si and for dsi (and the number of verifiers for dsi within the
ranks launched). The measurements and the choice are stored in the results file (attribute `planner`).
"""
from __future__ import annotations

import numpy as np

from dsi_mpi.decoding.baselines import run_baseline
from dsi_mpi.io.records import RunRecord

CALIBRATION_TOKENS = 32
CALIBRATION_LOOKAHEAD = 4


def calibrate(decoder, channel, prompt: list[int], stop_at_eos: bool) -> dict:
    """Measured inputs of the time model (seconds, and the acceptance rate)."""
    for _ in range(2):  # the first pass warms every shape up; the second is measured
        plain = run_baseline(channel, 1, "nonsi", prompt, CALIBRATION_TOKENS, 1, stop_at_eos,
                             RunRecord("nonsi", -1, "calibration"))
        si = decoder.generate("si", prompt, CALIBRATION_TOKENS, CALIBRATION_LOOKAHEAD, RunRecord("si", -1, "calibration"))
    n = len(plain.tokens)
    tasks = si.task_table()
    verify = tasks["busy_s"][(tasks["n_drafts"] > 0) & ~np.isnan(tasks["busy_s"])]
    return {
        "target_ttft_s": plain.ttft_s,
        "target_tpot_s": (plain.wall_s - plain.ttft_s) / max(n - 1, 1),
        "verify_forward_s": float(np.median(verify)) if len(verify) else (plain.wall_s - plain.ttft_s) / max(n - 1, 1),
        "drafter_ttft_s": si.drafter_prefill_s,
        "drafter_tpot_s": si.draft_s / max(si.drafted - 1, 1),
        "acceptance": si.accepted / si.compared if si.compared else 0.0,
        "tokens": CALIBRATION_TOKENS,
    }


def plan(measured: dict, verifier_budget: int, new_tokens: int, lookahead, verifiers, nonsi_thread: bool) -> dict:
    """Each algorithm's lookahead and dsi's verifier count: fixed where configured, else the time model's best."""
    from dsi_mpi.simulator import Latencies, best_lookahead, best_setting
    lat = Latencies(drafter_ttft=measured["drafter_ttft_s"], drafter_tpot=measured["drafter_tpot_s"],
                    target_ttft=measured["target_ttft_s"], target_tpot=measured["verify_forward_s"])
    a = min(max(measured["acceptance"], 0.0), 1.0)
    choice = {"measured": measured}
    choice["si"] = best_lookahead("si", lat, a, new_tokens)[0] if lookahead == "auto" else lookahead
    fixed_v = verifier_budget if verifiers in (0, "auto") else min(verifiers, verifier_budget)
    if verifiers == "auto" and lookahead == "auto":
        best = best_setting(lat, a, new_tokens, verifier_budget, restart_probe=nonsi_thread and verifier_budget > 1)
        choice["dsi"], choice["verifiers"] = best.lookahead, best.verifiers
    elif verifiers == "auto":
        options = [(best_lookahead("dsi", lat, a, new_tokens, v, lookaheads=[lookahead],
                                   restart_probe=nonsi_thread and v > 1)[1], v) for v in range(1, verifier_budget + 1)]
        choice["dsi"], choice["verifiers"] = lookahead, min(options)[1]
    else:
        choice["verifiers"] = fixed_v
        choice["dsi"] = (best_lookahead("dsi", lat, a, new_tokens, fixed_v, restart_probe=nonsi_thread and fixed_v > 1)[0]
                         if lookahead == "auto" else lookahead)
    choice["hf_assisted"] = choice["hf_prompt_lookup"] = choice["si"]
    return choice
