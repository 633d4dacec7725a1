"""`lookahead = "auto"` / `verifiers = "auto"`: the time model's best setting for a measured pair.

The job measures the pair first, briefly, on its own ranks (dsi_mpi/app/session.py: `calibrate`); from those
measurements the simulator picks the best lookahead for si and for dsi (and the number of verifiers for dsi
within the ranks launched). The measurements and the choice are stored in the results file (attribute
`planner`).
"""

from __future__ import annotations

from dsi_mpi.timemodel.inputs import model_acceptance, model_latencies
from dsi_mpi.timemodel.simulator import best_lookahead, best_setting


def plan(
    measured: dict, verifier_budget: int, new_tokens: int, lookahead, verifiers, nonsi_thread: bool, capacity: int = 1
) -> dict:
    """Each algorithm's lookahead and dsi's verifier count: fixed where configured, else the time model's best.
    capacity: tasks one verifier takes at once (a pipelined group of P stages: P, simulator.pipeline_verifiers)."""
    lat = model_latencies(measured)[0]
    a = model_acceptance(measured)
    choice = {"measured": measured}
    choice["si"] = best_lookahead("si", lat, a, new_tokens)[0] if lookahead == "auto" else lookahead
    fixed_v = verifier_budget if verifiers in (0, "auto") else min(verifiers, verifier_budget)
    if verifiers == "auto" and lookahead == "auto" and capacity == 1:
        best = best_setting(lat, a, new_tokens, verifier_budget, nonsi_thread=nonsi_thread and verifier_budget > 1)
        choice["dsi"], choice["verifiers"] = best.lookahead, best.verifiers
    elif verifiers == "auto":
        ks = range(1, 21) if lookahead == "auto" else [lookahead]
        options = []
        for v in range(1, verifier_budget + 1):
            sp = v * capacity
            k, latency = best_lookahead(
                "dsi", lat, a, new_tokens, sp, lookaheads=ks, nonsi_thread=nonsi_thread and sp > 1
            )
            options.append((latency, v, k))
        _, choice["verifiers"], choice["dsi"] = min(options)
    else:
        choice["verifiers"] = fixed_v
        choice["dsi"] = (
            best_lookahead(
                "dsi", lat, a, new_tokens, fixed_v * capacity, nonsi_thread=nonsi_thread and fixed_v * capacity > 1
            )[0]
            if lookahead == "auto"
            else lookahead
        )
    choice["hf_assisted"] = choice["hf_prompt_lookup"] = choice["si"]
    return choice
