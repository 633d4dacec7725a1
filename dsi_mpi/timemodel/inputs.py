"""The time model at measured inputs: the simulator's Latencies and acceptance from the measured dict that
dsi_mpi/reporting/time_model.py makes of a results file (or the planner's calibration), and the model's
latencies of nonsi, si and dsi at a setting.

The time model charges T(n) per target forward of n tokens of si and dsi (T(1) and the ratios T(n) / T(1) of
verify_by_tokens_s; flat at verify_forward_s where T(1) was not measured), target_tpot_s per nonsi step
(`model_latencies`), at the clamped acceptance (`model_acceptance`).
"""

from __future__ import annotations

import numpy as np

from dsi_mpi.timemodel.simulator import Latencies, nonsi_latency, si_expected_latency, simulate

TRIALS = 200  # Monte Carlo trials of the time model's dsi prediction


def verify_ratios(by_tokens: dict[int, float]) -> tuple[float, ...]:
    """T(n) / T(1) for n = 2 .. the largest measured, sizes not measured read linearly between measured ones;
    () without T(1)."""
    if 1 not in by_tokens or len(by_tokens) < 2:
        return ()
    sizes = sorted(by_tokens)
    values = np.interp(range(2, sizes[-1] + 1), sizes, [by_tokens[n] for n in sizes])
    return tuple(float(v / by_tokens[1]) for v in values)


def model_latencies(m: dict):
    """(speculative, plain) simulator Latencies: si/dsi pay verify_forward_s per target forward, nonsi
    target_tpot_s per step."""
    by_tokens = {int(n): s for n, s in m.get("verify_by_tokens_s", {}).items()}
    ratios = verify_ratios(by_tokens)
    spec = Latencies(
        drafter_ttft=m["drafter_ttft_s"],
        drafter_tpot=m["drafter_tpot_s"],
        target_ttft=m["target_ttft_s"],
        target_tpot=by_tokens[1] if ratios else m["verify_forward_s"],
        verify_ratios=ratios,
    )
    plain = Latencies(
        drafter_ttft=m["drafter_ttft_s"],
        drafter_tpot=m["drafter_tpot_s"],
        target_ttft=m["target_ttft_s"],
        target_tpot=m["target_tpot_s"],
    )
    return spec, plain


def model_acceptance(m: dict) -> float:
    """The measured acceptance clamped to [0, 1], as the time model takes it."""
    return min(max(m["acceptance"], 0.0), 1.0)


def predicted_latencies(m: dict, setting: dict, trials: int = TRIALS) -> dict:
    """The time model at the measured inputs: nonsi exactly, si by its exact expectation, dsi by Monte Carlo
    with the coordinator's rules (the non-SI thread only with a spare verifier, as the coordinator)."""
    spec, plain = model_latencies(m)
    a, V, N = model_acceptance(m), setting["verifiers"], setting["tokens"]
    dsi = simulate(
        "dsi",
        spec,
        a,
        setting["lookahead"]["dsi"],
        V,
        N,
        seed=0,
        trials=trials,
        nonsi_thread=setting["nonsi_thread"] and V > 1,
        drafter_layers=setting["drafter_layers"],
        message_s=m.get("message_s", 0.0),
    )
    return {
        "nonsi": nonsi_latency(plain, N),
        "si": si_expected_latency(spec, a, setting["lookahead"]["si"], N)
        if setting["lookahead"]["si"]
        else simulate("si", spec, a, 0, 1, N, seed=0, trials=trials, message_s=m.get("message_s", 0.0)).mean_latency,
        "dsi": dsi.mean_latency,
    }
