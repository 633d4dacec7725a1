"""Gantt charts (`dsi-mpi plot gantt`): per (prompt, algorithm), what every rank did over time (drafting,
verification forwards, waits, rejections, cancellations) above the committed-token curves of every algorithm
on that prompt, so a slow run shows where its time went."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsi_mpi.io.records import Event
from dsi_mpi.reporting import metrics as mt

BAR_KINDS = {
    Event.DRAFTER_PREFILL: ("drafter prefill", "#08519c"),
    Event.DRAFT: ("draft", "#1f77b4"),
    Event.DRAFT_CATCH_UP: ("draft + catch-up", "#6baed6"),
    Event.DRAFT_INTERRUPTED: ("draft interrupted", "#9ecae1"),
    Event.VERIFY: ("verify (result used)", "#2ca02c"),
    Event.VERIFY_ABORTED: ("verify aborted", "#d62728"),
    Event.WAIT: ("wait (rank 0 idle)", "#bdbdbd"),
}
STALE_VERIFY = ("verify (result stale)", "#c7e9c0")
CURVE_COLORS = {
    "nonsi": "#7f7f7f",
    "si": "#ff7f0e",
    "hf_assisted": "#9467bd",
    "hf_prompt_lookup": "#8c564b",
    "dsi": "#000000",
}

MS = 1e3  # the charts' time unit: milliseconds


def pyplot():
    """matplotlib with the Agg backend, imported only when a picture is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gantt_data(rec: dict, verifiers: int) -> dict:
    """Bars per lane (rank) and kind, markers, and whether rank 0's waits were derived from token arrivals
    (baselines record no events: rank 0 then waits from one token arrival to the next)."""
    ev = rec["events"]
    stale = {int(t["task_id"]) for t in rec["tasks"] if t["outcome"] in mt.STALE_OUTCOMES}
    lanes = list(range(verifiers + 1))
    bars = {rank: {} for rank in lanes}
    for e in ev:
        kind, rank = int(e["kind"]), int(e["rank"])
        if kind not in BAR_KINDS:
            continue
        name = Event(kind).label
        if kind == Event.VERIFY and int(e["task_id"]) in stale:
            name = "verify_stale"
        bars.setdefault(rank, {}).setdefault(name, []).append((float(e["t0"]), float(e["t1"] - e["t0"])))
    derived = not len(ev)
    if derived:
        arrivals = np.unique(np.asarray(rec["commit_times"], dtype=float))
        starts = np.concatenate(([0.0], arrivals[:-1]))
        bars[0]["wait"] = [(float(s), float(t - s)) for s, t in zip(starts, arrivals)]
    markers = {
        "reject": [float(e["t0"]) for e in ev if e["kind"] == Event.REJECT],
        "cancel_sent": [(float(e["t0"]), int(e["value"])) for e in ev if e["kind"] == Event.CANCEL_SENT],
    }
    return {"lanes": sorted(bars), "bars": bars, "markers": markers, "derived_waits": derived}


def draw_gantt(rec: dict, meta: dict, path: Path, others: list[dict] = ()) -> dict:
    """One PNG: a lane per rank above the committed-token curve (the prompt's other algorithms as thin lines)."""
    plt = pyplot()
    verifiers = mt.job_shape(meta, [rec])["verifiers"]
    data = gantt_data(rec, verifiers)
    lanes = data["lanes"]
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(13, 2.2 + 0.75 * len(lanes) + 2.6),
        gridspec_kw={"height_ratios": [0.75 * len(lanes) + 0.6, 2.6]},
    )
    _draw_bars(top, data)
    cancels = _draw_markers(top, bottom, data)
    _label_lanes(top, rec, data, verifiers)
    _draw_curves(bottom, rec, others)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    counts = {rank: {name: len(spans) for name, spans in kinds.items()} for rank, kinds in data["bars"].items()}
    return {
        "path": str(path),
        "lanes": lanes,
        "bars_per_lane": counts,
        "derived_waits": data["derived_waits"],
        "markers": len(data["markers"]["reject"]) + len(cancels),
        "markers_by_kind": {k: len(v) for k, v in data["markers"].items()},
        "commits": len(rec["commit_times"]),
    }


def _draw_bars(top, data: dict) -> None:
    """Each rank's lane: a bar per event, coloured by kind, each kind named once in the legend."""
    colors = {k.label: c for k, (_, c) in BAR_KINDS.items()} | {"verify_stale": STALE_VERIFY[1]}
    labels = {k.label: n for k, (n, _) in BAR_KINDS.items()} | {"verify_stale": STALE_VERIFY[0]}
    if data["derived_waits"]:
        labels["wait"] = "wait for the next token (from arrival times)"
    seen = set()
    for rank, kinds in data["bars"].items():
        for name, spans in kinds.items():
            spans_ms = [(t * MS, max(d * MS, 0.05)) for t, d in spans]
            top.broken_barh(
                spans_ms,
                (-rank - 0.35, 0.7),
                facecolors=colors[name],
                edgecolor="white",
                linewidth=0.3,
                label=None if name in seen else labels[name],
            )
            seen.add(name)


def _draw_markers(top, bottom, data: dict) -> list:
    """Rejections as dashed lines across both panels, CANCELs as crosses on their verifier's lane."""
    for t in data["markers"]["reject"]:
        for ax in (top, bottom):
            ax.axvline(t * MS, color="#d62728", linewidth=0.8, alpha=0.6, linestyle="--")
    if data["markers"]["reject"]:
        top.plot([], [], color="#d62728", linestyle="--", label="rejection")
    cancels = data["markers"]["cancel_sent"]
    if cancels:
        top.scatter(
            [t * MS for t, _ in cancels],
            [-v for _, v in cancels],
            marker="x",
            color="black",
            s=40,
            zorder=5,
            label="cancel sent to this verifier",
        )
    return cancels


def _label_lanes(top, rec: dict, data: dict, verifiers: int) -> None:
    """Lane names (with each verifier's busy share where events say it), the legend and the title."""
    lanes = data["lanes"]
    busy = mt.rank_utilisation(rec, verifiers)
    names = ["rank 0\ndrafter + coordinator"] + [
        f"rank {r} verifier\nbusy {busy[r - 1]:.0%}"
        if rec["wall_s"] and not data["derived_waits"]
        else f"rank {r} verifier"
        for r in lanes[1:]
    ]
    top.set_yticks([-r for r in lanes], names)
    top.set_ylim(-lanes[-1] - 0.7, 0.7)
    if data["derived_waits"]:
        top.text(
            0.5,
            -0.5 - lanes[-1] / 2,
            f"{rec['algorithm']} records no per-rank events: verifier work not shown",
            ha="center",
            va="center",
            transform=top.get_yaxis_transform(),
            color="#555555",
            fontsize=9,
        )
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    top.set_title(
        f"{rec['algorithm']}: prompt {rec['prompt_index']} ({rec['prompt_id']}), {len(rec['tokens'])} "
        f"tokens in {rec['wall_s'] * MS:.1f} ms ({mt.prompt_ms_per_token(rec):.2f} ms/token), "
        f"first token {rec['ttft_s'] * MS:.1f} ms",
        fontsize=10,
    )


def _draw_curves(bottom, rec: dict, others: list[dict]) -> None:
    """Tokens committed over time: this run thick, the prompt's other algorithms thin."""
    for run in [*others, rec]:
        t, mine = np.asarray(run["commit_times"]) * MS, run is rec
        label = f"{run['algorithm']}{' (this run)' if mine else ''}: {run['wall_s'] * MS:.0f} ms"
        bottom.step(
            np.concatenate(([0], t)),
            np.arange(len(t) + 1),
            where="post",
            linewidth=2.4 if mine else 1.2,
            color=CURVE_COLORS.get(run["algorithm"], "#17becf"),
            alpha=1 if mine else 0.75,
            zorder=3 if mine else 2,
            label=label,
        )
    bottom.set_ylabel("tokens committed")
    bottom.set_xlabel("time since the run's start (ms, rank 0's clock)")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    bottom.grid(alpha=0.3)
    bottom.set_xlim(0, None)


def gantt(path: str, out: str, prompt: int | None = None, algorithm: str | None = None) -> list[dict]:
    """Draw a Gantt PNG per (prompt, algorithm) of a results file into directory `out`."""
    from dsi_mpi.io.results import read_results

    meta, records = read_results(path)
    chosen = [
        r
        for r in records
        if (prompt is None or r["prompt_index"] == prompt) and (algorithm is None or r["algorithm"] == algorithm)
    ]
    if not chosen:
        wanted = " and ".join(w for w in (prompt is not None and f"prompt {prompt}", algorithm) if w) or "any prompt"
        raise ValueError(f"{path} has no complete record for {wanted}")
    Path(out).mkdir(parents=True, exist_ok=True)
    drawn = []
    for rec in sorted(chosen, key=lambda r: (r["prompt_index"], mt.ordered([r["algorithm"]]))):
        others = [r for r in records if r["prompt_index"] == rec["prompt_index"] and r is not rec]
        name = f"gantt_p{rec['prompt_index']:05d}_{rec['algorithm']}.png"
        drawn.append(
            draw_gantt(rec, meta, Path(out) / name, others)
            | {"prompt_index": rec["prompt_index"], "algorithm": rec["algorithm"]}
        )
    return drawn
