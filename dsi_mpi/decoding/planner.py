"""`lookahead = "auto"` / `verifiers = "auto"`: measure the pair briefly, then ask the time model.

Calibration runs on the job's own ranks, models and first prompt, after one untimed pass: plain decoding
on verifier 1 gives the target's prefill and per-token latency; a short si run gives the drafter's
per-token latency, the verification forward time and the acceptance rate, each measured by the one
estimator of dsi_mpi.reporting.time_model.time_model_inputs. The simulator then picks, from
those measurements, the best lookahead for si and for dsi (and the number of verifiers for dsi within the
ranks launched). The measurements and the choice are stored in the results file (attribute `planner`).
"""

from __future__ import annotations

from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.io.records import RunRecord
from dsi_mpi.reporting.time_model import model_acceptance, model_latencies, time_model_inputs

CALIBRATION_TOKENS = 32
CALIBRATION_LOOKAHEAD = 4


def calibrate(decoder, baseline, prompt: list[int], stop_at_eos: bool) -> dict:
    """Measured inputs of the time model (seconds, and the acceptance rate); baseline(algorithm, prompt,
    record, run) runs plain decoding where the job runs its baselines."""
    run = RunSettings(max_new_tokens=CALIBRATION_TOKENS, lookahead=CALIBRATION_LOOKAHEAD, stop_at_eos=stop_at_eos)
    for _ in range(2):  # the first pass warms every shape up; the second is measured
        plain = baseline("nonsi", prompt, RunRecord("nonsi", -1, "calibration"), run)
        si = decoder.generate("si", prompt, RunRecord("si", -1, "calibration"), run)
    measured = time_model_inputs({"nonsi": [plain.as_dict()], "si": [si.as_dict()]})
    if measured is None:
        raise RuntimeError("planner: the calibration run measured no usable latencies (too few tokens?)")
    return measured | {"tokens": CALIBRATION_TOKENS}


def plan(
    measured: dict, verifier_budget: int, new_tokens: int, lookahead, verifiers, nonsi_thread: bool, capacity: int = 1
) -> dict:
    """Each algorithm's lookahead and dsi's verifier count: fixed where configured, else the time model's best.
    capacity: tasks one verifier takes at once (a pipelined group of P stages: P, simulator.pipeline_verifiers)."""
    from dsi_mpi.simulator import best_lookahead, best_setting

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
