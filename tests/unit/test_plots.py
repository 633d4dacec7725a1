"""plots and explain on hand-made records whose figures are known: a file written by the real ResultsWriter."""

import csv
import json

import numpy as np
import pytest

from dsi_mpi.io.config import validate
from dsi_mpi.io.prompts import Prompt
from dsi_mpi.io.records import TASK_DTYPE, Event, Outcome, RunRecord
from dsi_mpi.io.results import ResultsWriter
from dsi_mpi.reporting import explain as ex
from dsi_mpi.reporting import plots

RANKS = [
    {"rank": r, "host": "h", "role": "drafter+coordinator" if r == 0 else "target verifier", "device": "emulated"}
    for r in range(3)
]


def task(task_id, verifier, outcome, busy, n_drafts=2, start=0.0):
    row = np.zeros((), dtype=TASK_DTYPE)
    row["task_id"], row["verifier"], row["outcome"], row["n_drafts"] = task_id, verifier, outcome, n_drafts
    row["start_s"], row["end_s"], row["busy_s"] = start, start + busy, busy
    return row.item()


def record(algorithm, index, commit_times, events=(), tasks=(), **scalars) -> RunRecord:
    return RunRecord(
        algorithm,
        index,
        f"p{index}",
        tokens=list(range(len(commit_times))),
        commit_times=list(commit_times),
        wall_s=commit_times[-1],
        ttft_s=commit_times[0],
        events=list(events),
        tasks=list(tasks),
        **scalars,
    )


def dsi_record(index, stale=True, ttft=0.01):
    """wall 0.1 s; rank 1 busy 0.06 s, rank 2 busy 0.04 s (0.02 s stale result + 0.01 s aborted if stale)."""
    tasks = [
        task(0, 1, Outcome.USED, 0.01, n_drafts=0),
        task(1, 2, Outcome.PREFILL_EXTRA, 0.01, n_drafts=0),
        task(2, 1, Outcome.USED, 0.05, start=0.02),
        task(3, 2, Outcome.STALE_RESULT if stale else Outcome.USED, 0.02, start=0.02),
        task(4, 2, Outcome.ABANDONED if stale else Outcome.USED, 0.01, start=0.05),
    ]
    events = [
        (1, Event.VERIFY, 0.0, 0.01, 0, 0),
        (2, Event.VERIFY, 0.0, 0.01, 1, 0),
        (1, Event.VERIFY, 0.02, 0.07, 2, 3),
        (2, Event.VERIFY, 0.02, 0.04, 3, 3),
        (2, Event.VERIFY_ABORTED if stale else Event.VERIFY, 0.05, 0.06, 4, 0),
        (2, Event.VERIFY, 0.09, 0.2, 5, 0),  # a forward running past the last token: clipped at wall time
        (0, Event.DRAFT, 0.01, 0.012, -1, 5),
        (0, Event.DRAFT, 0.012, 0.014, -1, 6),
        (0, Event.WAIT, 0.014, 0.02, -1, 0),
        (0, Event.REJECT, 0.045, 0.045, -1, 7),
        (0, Event.CANCEL_SENT, 0.045, 0.045, 4, 2),
    ]
    times = [ttft] + list(np.linspace(0.02, 0.1, 9))
    return record(
        "dsi",
        index,
        times,
        events,
        tasks,
        compared=10,
        accepted=6,
        rejections=1,
        tasks_sent=5,
        tasks_used=2,
        tasks_stale=2 if stale else 0,
        blocks_unsent=1,
        drafted=9,
        draft_s=0.016,
        drafter_prefill_s=0.002,
    )


def si_record(index, wall, c=0.2, acceptance=0.6):
    """Drafter steps of c * 10 ms; verification forwards of 10 ms, like the nonsi step."""
    events = [(0, Event.DRAFT, 0.01 + 0.02 * i, 0.01 + 0.02 * i + 0.01 * c, -1, i) for i in range(5)]
    events += [(1, Event.VERIFY, 0.0, 0.01, 0, 0), (1, Event.VERIFY, 0.02, 0.03, 1, 2)]
    tasks = [task(0, 1, Outcome.USED, 0.01, n_drafts=0), task(1, 1, Outcome.USED, 0.01), task(2, 1, Outcome.USED, 0.01)]
    return record(
        "si",
        index,
        [0.01] + list(np.linspace(0.02, wall, 9)),
        events,
        tasks,
        compared=10,
        accepted=round(10 * acceptance),
        tasks_sent=3,
        tasks_used=3,
        drafted=6,
        draft_s=0.05 * c,
        drafter_prefill_s=0.002,
    )


def nonsi_record(index):
    """10 tokens: prefill 10 ms then one token every 10 ms (wall 0.1 s)."""
    return record("nonsi", index, list(np.linspace(0.01, 0.1, 10)))


def meta(k=3):
    return {"config_toml": f"[decoding]\nlookahead = {k}\nmax_new_tokens = 10\n", "ranks": json.dumps(RANKS)}


@pytest.fixture
def results(tmp_path):
    cfg = validate(
        {
            "models": {"kind": "emulated"},
            "decoding": {"algorithms": ["nonsi", "si", "dsi"], "lookahead": 3, "max_new_tokens": 10},
        }
    )
    writer = ResultsWriter(str(tmp_path / "r.h5"), cfg)
    writer.add_metadata({"ranks": RANKS})
    for index, si_wall in ((0, 0.08), (1, 0.125)):
        prompt = Prompt(index, f"p{index}", "text")
        for rec in (nonsi_record(index), si_record(index, si_wall), dsi_record(index)):
            writer.write_record(prompt, [1, 2, 3], rec)
        writer.mark_complete(prompt)
    writer.close()
    return str(tmp_path / "r.h5")


def test_table_numbers(results, tmp_path):
    rows = {r["algorithm"]: r for r in plots.table([results], str(tmp_path / "t"))}
    dsi = rows["dsi"]
    assert dsi["tokens"] == 20 and dsi["prompts"] == 2
    assert dsi["speedup_vs_nonsi"] == pytest.approx(0.2 / 0.2)
    assert dsi["speedup_vs_si"] == pytest.approx((0.08 + 0.125) / 0.2)
    assert rows["si"]["speedup_vs_nonsi"] == pytest.approx(0.2 / 0.205)
    assert dsi["acceptance"] == pytest.approx(0.6)
    assert dsi["accepted_per_verification"] == pytest.approx(12 / 2)  # one applied block per prompt
    assert dsi["verifier_utilisation"] == pytest.approx((0.06 + 0.05) / (2 * 0.1))
    assert dsi["stale_fraction"] == pytest.approx(0.03 / 0.10)
    assert dsi["blocks_unsent"] == 2 and dsi["tasks_stale"] == 4
    assert np.isnan(rows["nonsi"]["verifier_utilisation"])
    # no forward covers 0.014-0.02 and 0.07-0.09 of each prompt's 0.1 s (the last one is clipped at 0.1)
    assert dsi["outside_forwards_share"] == pytest.approx(0.026 / 0.1)
    assert dsi["outside_forwards_ms_per_verification"] == pytest.approx(26.0)  # one applied block per prompt
    assert np.isnan(rows["nonsi"]["outside_forwards_share"])
    with open(tmp_path / "t.csv") as f:
        written = list(csv.DictReader(f))
    assert [r["algorithm"] for r in written] == ["nonsi", "si", "dsi"]
    assert float(written[2]["stale_fraction"]) == pytest.approx(0.3) and written[0]["acceptance"] == ""
    markdown = (tmp_path / "t.md").read_text()
    assert "| r | dsi | 2 | 20 |" in markdown and "30.0%" in markdown and "## Why: r" in markdown


def test_gantt_counts_equal_the_events(results, tmp_path):
    drawn = {d["algorithm"]: d for d in plots.gantt(results, str(tmp_path / "g"), prompt=0)}
    dsi = drawn["dsi"]
    assert dsi["lanes"] == [0, 1, 2] and dsi["commits"] == 10
    assert dsi["bars_per_lane"] == {
        0: {"draft": 2, "wait": 1},
        1: {"verify": 2},
        2: {"verify": 2, "verify_stale": 1, "verify_aborted": 1},
    }
    assert dsi["markers"] == 2 and dsi["markers_by_kind"] == {"reject": 1, "cancel_sent": 1}
    assert drawn["si"]["bars_per_lane"] == {0: {"draft": 5}, 1: {"verify": 2}, 2: {}}
    nonsi = drawn["nonsi"]  # no events: rank 0 waits from one token arrival to the next
    assert nonsi["derived_waits"] and nonsi["bars_per_lane"][0] == {"wait": 10} and nonsi["markers"] == 0
    assert (tmp_path / "g" / "gantt_p00000_dsi.png").read_bytes()[:4] == b"\x89PNG"
    assert plots.main(["gantt", results, "--out", str(tmp_path / "h"), "--prompt", "7"]) == 2


def test_distributions_values(results, tmp_path):
    data = plots.distributions([results, results], str(tmp_path / "d"))
    assert data["per_token_ms"][f"{results}: nonsi"] == pytest.approx([10.0, 10.0])
    assert data["speedups"][f"{results}: dsi / si"] == pytest.approx([0.8, 1.25])
    assert len(data["paths"]) == 2 and all(open(p, "rb").read(4) == b"\x89PNG" for p in data["paths"])
    single = plots.distribution_data([results])
    assert single["per_token_ms"]["dsi"] == pytest.approx([10.0, 10.0])
    assert sorted(single["speedups"]) == ["dsi / nonsi", "dsi / si", "si / nonsi"]


def run_set(si_wall, c, acceptance, stale=True, dsi_ttft=0.01):
    return [nonsi_record(0), si_record(0, si_wall, c, acceptance), dsi_record(0, stale, dsi_ttft)]


def find(sentences, words):
    hits = [s for s in sentences if words in s]
    return hits[0] if hits else None


def test_explain_says_why_si_lost_only_when_it_did():
    slow = ex.explain(run_set(0.2, c=0.9, acceptance=0.2), meta(k=3))
    why = find(slow, "si was slower than nonsi because")
    assert why and "c = 0.90" in slow[0] and "acceptance 0.20" in slow[0]
    assert "costs 3.70 target forwards" in why and "measured 0.50x" in why
    fast = ex.explain(run_set(0.05, c=0.1, acceptance=0.9), meta(k=3))
    assert find(fast, "si was slower") is None and find(fast, "measured 2.00x")
    assert find(fast, "costs 1.30 target forwards")


def test_explain_reacts_to_stale_work_utilisation_and_ttft():
    sentences = ex.explain(run_set(0.08, 0.2, 0.6), meta())
    assert find(sentences, "30% of dsi's verifier busy time went to stale work")
    assert find(sentences, "dsi kept 1.1 of 2 verifier(s) busy on average (utilisation 55%)")
    assert find(sentences, "dsi's first token took as long as nonsi's")
    other = ex.explain(run_set(0.08, 0.2, 0.6, stale=False, dsi_ttft=0.02), meta())
    assert find(other, "0% of dsi's verifier busy time went to stale work (0 of 5 tasks")
    assert find(other, "dsi's first token took 2.00x nonsi's")
    assert find(other, "time model's best lookahead is")
    assert ex.explain([], {}) == []
    assert ex.explain([nonsi_record(0)], {}) == []  # nothing to compare: no sentence is made up


def test_plot_without_a_subcommand_draws_the_default_set(results, tmp_path, capsys):
    out = tmp_path / "all"
    assert plots.main([results, "--out", str(out)]) == 0
    written = capsys.readouterr().out.split()
    want = {f"gantt_p00000_{a}.png" for a in ("nonsi", "si", "dsi")} | {
        "table.md",
        "table.csv",
        "latency_per_token.png",
        "speedups.png",
    }
    assert {p.name for p in out.iterdir()} == want and sorted(written) == sorted(str(out / n) for n in want)
    assert plots.main([str(tmp_path / "missing.h5"), "--out", str(out)]) == 2


def test_acceptance_figures_from_the_tasks_table():
    """Mean acceptance length is vLLM's 1 + accepted / verifications; the histogram counts verifications by
    how many drafts stood; inter-token percentiles come from commit_times deltas."""
    from dsi_mpi.reporting import metrics as mt

    rec = si_record(0, 0.1).as_dict()
    rec["tasks"]["accepted"] = [-1, 3, 1]  # the prefill never judged a draft; two verifications
    m = mt.algorithm_metrics([rec], 1)
    assert m["acceptance_histogram"] == [0, 1, 0, 1]
    assert m["mean_acceptance_length"] == pytest.approx(1 + 6 / 2)  # accepted = 6 over 2 verifications
    gaps = np.diff(rec["commit_times"]) * 1e3
    assert m["itl_p50_ms"] == pytest.approx(np.percentile(gaps, 50))
    assert m["itl_p99_ms"] == pytest.approx(np.percentile(gaps, 99))
    assert m["recovered_tokens"] == 0 and m["bonus_tokens"] == 10 - 6


def test_an_adaptive_file_is_predicted_with_the_adaptive_rule(results):
    """A config that leaves decoding.lookahead out is adaptive: the time model runs the rule (k = 0), not the
    longest block the records hold (it did, so measured/predicted compared adaptive runs with fixed k)."""
    from dsi_mpi.io.results import read_results
    from dsi_mpi.reporting import metrics as mt
    from dsi_mpi.reporting import time_model as tm

    _, records = read_results(results)
    adaptive = {"config_toml": '[decoding]\nlookahead = "adaptive"\n'}
    assert mt.job_shape(adaptive, records)["lookahead"] == 0
    assert mt.job_shape(meta(3), records)["lookahead"] == 3
    longest = max(int(r["tasks"]["n_drafts"].max()) for r in records if len(r["tasks"]))
    assert mt.job_shape({}, records)["lookahead"] == longest  # no config: the longest block of the records
    for r in records:
        r["lookahead"] = 0  # what an adaptive run records
    assert tm.run_setting(adaptive, records)["lookahead"] == {"si": 0, "dsi": 0}


def test_tasks_by_drafts_sent_show_how_much_a_run_speculated():
    """After the prefill (base 0), tasks by drafts sent; plain runs (no drafts) with the tokens they computed."""
    from dsi_mpi.reporting import metrics as mt
    from dsi_mpi.reporting.report import histogram_lines

    rec = si_record(0, 0.1).as_dict()
    rec["tasks"]["base"] = [0, 5, 8]
    rec["tasks"]["n_drafts"] = [0, 0, 3]
    rec["tasks"]["computed"] = [5, 3, 4]
    rec["tasks"]["outcome"][2] = Outcome.STALE_RESULT  # not applied: not counted
    assert mt.lookahead_histogram([rec]) == ([1], 3)
    rec["tasks"]["outcome"][2] = Outcome.USED
    assert mt.lookahead_histogram([rec]) == ([1, 0, 0, 1], 3)
    assert "si tasks by drafts sent (2 after the prefills; 0: plain runs, 3 tokens): 0: 1, 3: 1" in histogram_lines(
        [rec]
    )
    assert mt.lookahead_histogram([nonsi_record(0).as_dict()]) == ([], 0)
