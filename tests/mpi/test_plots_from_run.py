"""A real emulated MPI job (3 ranks, 2 prompts), then gantt, table and distributions checked against its file."""

import csv
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from dsi_mpi.io.records import Event
from dsi_mpi.io.results import read_results
from dsi_mpi.reporting import explain as ex
from dsi_mpi.reporting import plots
from dsi_mpi.reporting.report import summary_table

PROMPTS = [{"id": "p0", "prompt": "def add(a, b):\n    return"}, {"id": "p1", "prompt": "import os\n"}]
ALGORITHMS = ["nonsi", "si", "dsi"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from helpers import launch, write_job

    folder = tmp_path_factory.mktemp("plots_run")
    emulation = {"target_tpot_s": 0.006, "target_ttft_s": 0.01, "drafter_tpot_s": 0.0015, "drafter_ttft_s": 0.003}
    config = write_job(
        folder,
        models={"kind": "emulated"},
        decoding={"algorithms": ALGORITHMS, "max_new_tokens": 30, "seed": 5, "warmup_prompts": 1},
        emulation=emulation | {"acceptance": 0.6, "prompt_tokens": 16},
    )
    proc = launch(["-m", "dsi_mpi", "run", config], ranks=3, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder / "stdout.txt").write_text(
        proc.stdout
    )  # the summary table the job printed (test_every_summary_figure_by_hand)
    return str(folder / "out.h5")


def stored(path):
    """{(prompt, algorithm): h5 group contents} read straight from the file, not through read_results."""
    out = {}
    with h5py.File(path) as f:
        for name, group in f["prompts"].items():
            for algorithm in ALGORITHMS:
                run = group[algorithm]
                out[int(name), algorithm] = {
                    "events": run["events"][()],
                    "tasks": run["tasks"][()],
                    "commit_times": run["commit_times"][()],
                    **dict(run.attrs),
                }
    return out


def test_gantt_lanes_and_bars_match_the_file(results, tmp_path):
    data = stored(results)
    drawn = plots.gantt(results, str(tmp_path))
    assert len(drawn) == 2 * len(ALGORITHMS)
    for d in drawn:
        run = data[d["prompt_index"], d["algorithm"]]
        assert d["lanes"] == [0, 1, 2] and d["commits"] == len(run["commit_times"]) == 30
        assert open(d["path"], "rb").read(4) == b"\x89PNG"
        ev = run["events"]
        if d["algorithm"] == "nonsi":
            assert d["derived_waits"] and d["bars_per_lane"][0]["wait"] == len(np.unique(run["commit_times"]))
            continue
        bars = ("drafter_prefill", "draft", "draft_catch_up", "draft_interrupted", "verify", "verify_aborted", "wait")
        want = Counter((int(e["rank"]), Event(int(e["kind"])).label) for e in ev if Event(int(e["kind"])).label in bars)
        got = Counter()  # stale results are verify events drawn in a lighter shade
        for rank, kinds in d["bars_per_lane"].items():
            for kind, n in kinds.items():
                got[rank, "verify" if kind == "verify_stale" else kind] += n
        assert got == want, d["algorithm"]
        assert d["markers"] == int(np.isin(ev["kind"], [Event.REJECT, Event.CANCEL_SENT]).sum())
        assert d["markers_by_kind"]["reject"] == run["rejections"]
    dsi = [d for d in drawn if d["algorithm"] == "dsi"]
    assert all(set(d["bars_per_lane"][v]) & {"verify", "verify_stale"} for d in dsi for v in (1, 2))


def test_table_rows_match_the_file(results, tmp_path):
    data = stored(results)
    plots.table([results], str(tmp_path / "t"))
    with open(tmp_path / "t.csv") as f:
        rows = {r["algorithm"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(ALGORITHMS)
    wall = {a: sum(v["wall_s"] for (p, b), v in data.items() if b == a) for a in ALGORITHMS}
    for a in ALGORITHMS:
        assert int(rows[a]["tokens"]) == 60 and int(rows[a]["prompts"]) == 2
        assert float(rows[a]["speedup_vs_nonsi"]) == pytest.approx(wall["nonsi"] / wall[a])
        assert float(rows[a]["speedup_vs_si"]) == pytest.approx(wall["si"] / wall[a])
    dsi = [v for (p, a), v in data.items() if a == "dsi"]
    assert int(rows["dsi"]["tasks_stale"]) == sum(v["tasks_stale"] for v in dsi)
    assert int(rows["dsi"]["blocks_unsent"]) == sum(v["blocks_unsent"] for v in dsi)
    accepted, compared = sum(v["accepted"] for v in dsi), sum(v["compared"] for v in dsi)
    assert float(rows["dsi"]["acceptance"]) == pytest.approx(accepted / compared)
    assert 0 < float(rows["dsi"]["verifier_utilisation"]) <= 1 and rows["nonsi"]["verifier_utilisation"] == ""
    # si uses one of the two verifiers, so at most half of their time
    assert 0 < float(rows["si"]["verifier_utilisation"]) <= 0.5
    assert "## Why: out" in (tmp_path / "t.md").read_text()


def test_distributions_and_explain_match_the_file(results, tmp_path):
    data = stored(results)
    dist = plots.distributions([results], str(tmp_path))
    for a in ALGORITHMS:
        want = [1e3 * data[p, a]["wall_s"] / 30 for p in (0, 1)]
        assert dist["per_token_ms"][a] == pytest.approx(want)
    assert dist["speedups"]["dsi / si"] == pytest.approx(
        [data[p, "si"]["wall_s"] / data[p, "dsi"]["wall_s"] for p in (0, 1)]
    )
    assert len(dist["paths"]) == 2
    meta, records = read_results(results)
    sentences = ex.explain(records, meta)
    assert any(s.startswith("measured: target") and "k = 3, 2 verifier rank(s)" in s for s in sentences)
    assert any(s.startswith("dsi kept") for s in sentences)


# ---------------------------------------------------------------- the summary table, by hand
SUMMARY_COLUMNS = [
    "prompts",
    "tokens",
    "tok/s",
    "ms/tok",
    "TTFT ms",
    "vs nonsi",
    "vs si",
    "accept",
    "acc.len",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "tasks sent/used/stale",
]


def summary_by_hand(path) -> dict[str, dict]:
    runs: dict[str, dict[int, h5py.Group]] = {}
    out = {}
    with h5py.File(path) as f:
        for name, group in f["prompts"].items():
            for algorithm in ALGORITHMS:
                runs.setdefault(algorithm, {})[int(name)] = {
                    "attrs": dict(group[algorithm].attrs),
                    "tokens": group[algorithm]["tokens"][()],
                    "commit_times": group[algorithm]["commit_times"][()],
                    "tasks": group[algorithm]["tasks"][()],
                }
    for a, prompts in runs.items():
        wall = sum(r["attrs"]["wall_s"] for r in prompts.values())
        tokens = sum(len(r["tokens"]) for r in prompts.values())
        total = {
            key: sum(r["attrs"][key] for r in prompts.values())
            for key in ("accepted", "compared", "tasks_sent", "tasks_used", "tasks_stale")
        }
        verifications = sum(
            int(((r["tasks"]["outcome"] == 1) & (r["tasks"]["n_drafts"] > 0)).sum()) for r in prompts.values()
        )
        gaps = np.concatenate([np.diff(r["commit_times"]) for r in prompts.values()]) * 1e3
        row = {
            "prompts": len(prompts),
            "tokens": tokens,
            "tok/s": tokens / wall,
            "ms/tok": 1e3 * wall / tokens,
            "TTFT ms": 1e3 * np.mean([r["attrs"]["ttft_s"] for r in prompts.values()]),
            "accept": total["accepted"] / total["compared"] if total["compared"] else None,
            "acc.len": 1 + total["accepted"] / verifications if verifications else None,
            "p50 ms": np.percentile(gaps, 50),
            "p90 ms": np.percentile(gaps, 90),
            "p99 ms": np.percentile(gaps, 99),
            "tasks sent/used/stale": (
                f"{total['tasks_sent']}/{total['tasks_used']}/{total['tasks_stale']}" if total["tasks_sent"] else "-"
            ),
        }
        out[a] = row
    for a, prompts in runs.items():
        for base in ("nonsi", "si"):
            common = set(prompts) & set(runs[base])  # matched prompts
            out[a][f"vs {base}"] = sum(runs[base][i]["attrs"]["wall_s"] for i in common) / sum(
                prompts[i]["attrs"]["wall_s"] for i in common
            )
    return out


def parse(table: str) -> dict[str, dict]:
    lines = table.strip().splitlines()
    assert lines[0].split()[0] == "algorithm" and set(lines[1]) == {"-"}
    rows = {}
    for line in lines[2:]:
        if line.startswith("throughput:"):  # the job's throughput line follows the table (report.throughput_lines)
            break
        cells = line.split()
        assert len(cells) == len(SUMMARY_COLUMNS) + 1, line
        rows[cells[0]] = dict(zip(SUMMARY_COLUMNS, cells[1:]))
    return rows


def same(printed: str, want) -> bool:
    """The printed cell is `want` rounded to the cell's own digits (or '-' where there is no figure)."""
    if want is None or isinstance(want, str) or isinstance(want, int):
        return printed == ("-" if want is None else str(want))
    text = printed.rstrip("x")
    digits = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - want) <= 0.5 * 10**-digits + 1e-9


@pytest.mark.parametrize("source", ["job stdout", "report"])
def test_every_summary_figure_by_hand(results, source):
    """Every figure of the summary table the job printed (what `make run` shows), and of `report`'s, computed
    by hand from the HDF5 file with h5py alone."""
    if source == "job stdout":
        text = (Path(results).parent / "stdout.txt").read_text()
        table = text[text.index("algorithm") : text.index("results:")]
    else:
        table = summary_table(read_results(results)[1])
    printed, want = parse(table), summary_by_hand(results)
    assert list(printed) == ALGORITHMS
    for algorithm in ALGORITHMS:
        for column in SUMMARY_COLUMNS:
            assert same(printed[algorithm][column], want[algorithm][column]), (
                algorithm,
                column,
                printed[algorithm][column],
                want[algorithm][column],
            )
    assert want["nonsi"]["accept"] is None and printed["nonsi"]["accept"] == "-"


def test_acceptance_histogram_counts_every_applied_verification(results):
    from dsi_mpi.reporting import metrics as mt

    data = stored(results)
    for algorithm in ("si", "dsi"):
        counts = mt.acceptance_histogram([r for r in read_results(results)[1] if r["algorithm"] == algorithm])
        tasks = np.concatenate([v["tasks"] for (p, a), v in data.items() if a == algorithm])
        applied = tasks[(tasks["outcome"] == 1) & (tasks["n_drafts"] > 0)]
        assert sum(counts) == len(applied) and (applied["accepted"] >= 0).all()
        accepted = sum(v["accepted"] for (p, a), v in data.items() if a == algorithm)
        assert sum(j * n for j, n in enumerate(counts)) <= accepted  # zero-draft tasks judge drafts too
