"""Why a run was fast or slow: sentences built from the figures of dsi_mpi.reporting.metrics.

Every sentence is computed from the data (and from the paper's time model, dsi_mpi.timemodel.simulator, fed with
the measured latencies): a sentence whose inputs are missing is left out rather than guessed.
"""

from __future__ import annotations

import math

from dsi_mpi.reporting import metrics as mt
from dsi_mpi.reporting import time_model as tm
from dsi_mpi.timemodel import inputs as ti

NAN = math.nan
SAME = 0.1  # ratios within 10% of 1 are called "the same"


# ---------------------------------------------------------------- sentences
def explain(records: list[dict], meta: dict) -> list[str]:
    """Sentences saying why the run was fast or slow, each computed from the records (+ the time model)."""
    records = [r if isinstance(r, dict) else r.as_dict() for r in records]
    if not records:
        return []
    setting = tm.run_setting(meta, records)
    k, V, N = setting["lookahead"], setting["verifiers"], setting["tokens"]
    ranks = mt.job_shape(meta, records)["verifiers"]  # the job's verifier ranks (dsi may use fewer: V)
    by, figures = mt.by_algorithm(records), mt.compare(records, ranks)
    predicted = tm.predictions(meta, records)
    m = predicted["inputs"] if predicted else None
    model = _model(predicted) if predicted else None
    thread = setting["nonsi_thread"] and V > 1
    sentences = [
        _inputs(m, k, V, figures),
        _si(m, model, figures, k["si"]),
        _dsi(m, model, figures, V),
        _dsi_slower(m, model, figures, k["dsi"], V, N, setting["nonsi_thread"], setting["drafter_layers"]),
        _utilisation(m, figures, k["dsi"], ranks),
        _stale(by, figures),
        _ttft(figures),
        _verify_cost(m),
        _per_prompt(by),
        _lookahead(m, model, k, V, N, thread, setting["drafter_layers"]),
        _other(figures),
    ]
    return [s for s in sentences if s]


def _model(predicted: dict) -> dict:
    """time_model.predictions' latencies and speedups, plus the time model's inputs they came from."""
    m = predicted["inputs"]
    return {"lat": ti.model_latencies(m)[0], "a": ti.model_acceptance(m), "speedup": predicted["speedup"]} | (
        predicted["latency"]
    )


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _k(k: dict) -> str:
    """The lookahead: one number where si and dsi share it."""
    name = {a: str(k[a]) if k[a] else "adaptive" for a in ("si", "dsi")}
    return name["si"] if k["si"] == k["dsi"] else f"{name['si']} (si), {name['dsi']} (dsi)"


def _inputs(m, k, V, figures) -> str | None:
    if not m:
        return None
    runs = [a for a in ("si", "dsi") if a in figures and not math.isnan(figures[a]["accepted_per_verification"])]
    runs = ", ".join(f"{a} {figures[a]['accepted_per_verification']:.2f}" for a in runs)
    return (
        f"measured: target {1e3 * m['target_tpot_s']:.2f} ms per token (prefill {1e3 * m['target_ttft_s']:.1f} ms), "
        f"drafter {1e3 * m['drafter_tpot_s']:.2f} ms per token, so c = {m['c']:.2f}; acceptance "
        f"{m['acceptance']:.2f}; k = {_k(k)}, {V} verifier rank(s) for dsi"
        + (f"; drafts accepted per applied verification: {runs}" if runs else "")
    )


def _si(m, model, figures, k) -> str | None:
    """si's gain per iteration: (1 - a^(k+1)) / (1 - a) tokens for k c + 1 target forwards (a fixed k only)."""
    if not k:
        return None
    if not model or "si" not in figures:
        return None
    a, c = model["a"], m["c"]
    tokens = k + 1 if a >= 1 else (1 - a ** (k + 1)) / (1 - a)
    cost = k * c + 1
    predicted = model["speedup"]["si_vs_nonsi"]
    measured = figures["si"]["speedup_vs_nonsi"]
    head = (
        f"drafter latency is {c:.2f} of the target's and acceptance {a:.2f}: with k = {k} an si iteration "
        f"costs {cost:.2f} target forwards and commits {tokens:.2f} tokens on average, so the time model "
        f"predicts si at {_x(predicted)} nonsi's speed"
    )
    if math.isnan(measured):
        return head
    head += f"; measured {_x(measured)}"
    if measured < 1:
        if tokens < cost:
            return head + (
                f". si was slower than nonsi because each iteration commits fewer tokens ({tokens:.2f}) "
                f"than it costs target forwards ({cost:.2f})"
            )
        return head + (
            f". si was slower than nonsi although the time model predicts a gain: the loss "
            f"({_x(measured / predicted)} of the prediction) comes from costs outside the model"
        )
    return head


def _dsi(m, model, figures, V) -> str | None:
    if not model or "dsi" not in figures:
        return None
    pred_n, pred_s = model["speedup"]["dsi_vs_nonsi"], model["speedup"]["dsi_vs_si"]
    text = f"with {V} verifier(s) the time model predicts dsi at {_x(pred_n)} nonsi's speed and {_x(pred_s)} si's"
    got_n, got_s = figures["dsi"]["speedup_vs_nonsi"], figures["dsi"]["speedup_vs_si"]
    got = [f"{_x(v)} {b}'s" for v, b in ((got_n, "nonsi"), (got_s, "si")) if not math.isnan(v)]
    if got:
        text += "; measured " + " and ".join(got)
        if not math.isnan(got_n) and pred_n > 1:
            text += f" ({(got_n - 1) / (pred_n - 1):.0%} of the predicted gain over nonsi)"
    return text


def _dsi_slower(m, model, figures, k, V, N, nonsi_thread, layers) -> str | None:
    """dsi behind nonsi: with the non-SI thread (runtime.nonsi_thread and a spare verifier) the target goes on
    at once after a rejection, so the loss is outside the time model; without it no block is verified after a
    rejection until k new drafts exist, and the time model says what the thread would buy (a fixed k only)."""
    if not k:
        return None
    d = figures.get("dsi")
    if not model or not d or not d["speedup_vs_nonsi"] < 1:
        return None
    head = (
        f"dsi was slower than nonsi ({_x(d['speedup_vs_nonsi'])}) with {d['rejections']} rejections "
        f"({d['rejections'] / max(1, d['tokens']):.0%} of its tokens)"
    )
    if nonsi_thread and V > 1:
        return head + (
            f": after each one the target went on at once with a block of no drafts (the paper's non-SI "
            f"thread), and the time model predicts dsi at {_x(model['speedup']['dsi_vs_nonsi'])} nonsi's "
            f"speed, so the loss comes from costs outside the model (messages, wake-ups, shared cores)"
        )
    why = "runtime.nonsi_thread is off" if not nonsi_thread else "with one verifier there is no spare one for it"
    from dsi_mpi.timemodel.simulator import simulate

    thread = simulate(
        "dsi",
        model["lat"],
        model["a"],
        k,
        max(V, 2),
        N,
        seed=0,
        trials=ti.TRIALS,
        nonsi_thread=True,
        drafter_layers=layers,
    )
    return head + (
        f": the paper's non-SI thread was not used ({why}), so after a rejection no block is verified "
        f"until k = {k} new drafts exist ({1e3 * k * m['drafter_tpot_s']:.1f} ms, {k * m['c']:.2f} "
        f"target forwards); with it (a block of no drafts sent at each rejection, {max(V, 2)} verifiers) "
        f"the time model predicts dsi at {_x(model['nonsi'] / thread.mean_latency)} nonsi's speed "
        f"instead of {_x(model['speedup']['dsi_vs_nonsi'])}"
    )


def _utilisation(m, figures, k, V) -> str | None:
    d = figures.get("dsi")
    if not d or math.isnan(d["verifier_utilisation"]):
        return None
    u = d["verifier_utilisation"]
    text = f"dsi kept {u * V:.1f} of {V} verifier(s) busy on average (utilisation {u:.0%})"
    if m and k:
        from dsi_mpi.timemodel.simulator import min_verifiers_without_queueing

        need = min_verifiers_without_queueing(m["c"], k)
        text += (
            f"; the drafter forms a block every k c = {k * m['c']:.2f} target forwards, so "
            f"ceil(1 / (k c)) = {need} verifier(s) keep up with it"
        )
        text += (
            f" and the other {V - need} cannot be kept busy by drafting alone"
            if V > need
            else f" but the job had only {V}: blocks wait for a free verifier"
            if V < need
            else ""
        )
    return text


def _stale(by, figures) -> str | None:
    d = figures.get("dsi")
    if not d or math.isnan(d["stale_fraction"]):
        return None
    text = (
        f"{d['stale_fraction']:.0%} of dsi's verifier busy time went to stale work ({d['tasks_stale']} of "
        f"{d['tasks_sent']} tasks ended stale or aborted after a rejection; {d['blocks_unsent']} block(s) "
        f"were dropped before any verifier started them)"
    )
    c = mt.stale_work(by["dsi"])
    if c["cancellations"]:
        text += (
            f"; a cancelled forward kept its verifier busy a median {1e3 * c['median_busy_after_reject_s']:.2f} "
            f"ms after the rejection, {c['aborted']} of {c['cancellations']} were stopped mid-forward"
        )
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
        how = "as long as nonsi's" if abs(ratio - 1) <= SAME else f"{_x(ratio)} nonsi's"
        part = (
            f"{a}'s first token took {how} ({mine:.1f} vs {base['ttft_ms']:.1f} ms, the target's prefill), "
            f"{mine * figures[a]['prompts'] / 1e3 / figures[a]['wall_s']:.0%} of its wall time"
        )
        if not math.isnan(cap) and mine * figures[a]["prompts"] / 1e3 >= 0.1 * figures[a]["wall_s"]:
            part += f", which alone caps its speedup over nonsi at {_x(cap)}"
        parts.append(part)
    return "; ".join(parts) or None


def _verify_cost(m) -> str | None:
    if not m or m["verify_forward_s"] == m["target_tpot_s"]:  # equal: no nonsi to compare
        return None
    ratio = m["verify_forward_s"] / m["target_tpot_s"]
    how = "about as long as" if abs(ratio - 1) <= SAME else f"{_x(ratio)}"
    return (
        f"a verification forward took a median {1e3 * m['verify_forward_s']:.2f} ms, {how} a plain decoding "
        f"step ({1e3 * m['target_tpot_s']:.2f} ms); the time model charges si and dsi the one, nonsi the other"
    )


def _per_prompt(by) -> str | None:
    parts = []
    for a, b in (("dsi", "nonsi"), ("dsi", "si"), ("si", "nonsi")):
        s = mt.per_prompt_speedups(by, a, b)
        if s:
            parts.append(
                f"{a} beat {b} on {sum(v > 1 for v in s)} of {len(s)} prompts "
                f"(per-prompt speedup {min(s):.2f}x to {max(s):.2f}x)"
            )
    return "; ".join(parts) or None


def _lookahead(m, model, k, V, N, nonsi_thread, layers) -> str | None:
    """The k the time model prefers at the measured c and acceptance, and what it would gain."""
    if not model:
        return None
    from dsi_mpi.timemodel.simulator import best_lookahead

    parts = []
    for a, n in (("si", 1), ("dsi", V)):
        extra = {"nonsi_thread": nonsi_thread, "drafter_layers": layers} if a == "dsi" else {}
        best, t = best_lookahead(a, model["lat"], model["a"], N, verifiers=n, trials=20, **extra)
        used = k[a]
        now = (
            model[a]
            if a == "si"
            else best_lookahead(a, model["lat"], model["a"], N, verifiers=n, lookaheads=[used], trials=20, **extra)[1]
        )
        label = f"k = {used}" if used else "adaptive k"
        parts.append(
            f"k = {used} for {a} (the k used here)"
            if best == used
            else f"k = {best} for {a} (predicted {_x(now / t)} faster than the {label} used here)"
        )
    return "at these latencies and acceptance the time model's best lookahead is " + " and ".join(parts)


def _other(figures) -> str | None:
    parts = [
        f"{a} ran at {_x(f['speedup_vs_nonsi'])} nonsi's speed"
        for a, f in figures.items()
        if a not in ("nonsi", "si", "dsi") and not math.isnan(f["speedup_vs_nonsi"])
    ]
    return "; ".join(parts) or None
