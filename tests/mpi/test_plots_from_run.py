"""A real emulated MPI job (3 ranks, 2 prompts), then gantt, table and distributions checked against its file."""
import csv
import json
from collections import Counter

import h5py
import numpy as np
import pytest

from dsi_mpi.reporting import explain as ex
from dsi_mpi.reporting import plots
from dsi_mpi.io.records import CANCEL_SENT, EVENT_KINDS, REJECT
from dsi_mpi.io.results import read_results

PROMPTS = [{"id": "p0", "prompt": "def add(a, b):\n    return"}, {"id": "p1", "prompt": "import os\n"}]
ALGORITHMS = ["nonsi", "si", "dsi"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from conftest import launch
    folder = tmp_path_factory.mktemp("plots_run")
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in PROMPTS) + "\n")
    (folder / "job.toml").write_text(f"""
[models]
kind = "emulated"
[decoding]
algorithms = {json.dumps(ALGORITHMS)}
lookahead = 3
max_new_tokens = 30
seed = 5
[prompts]
path = "{folder / 'prompts.jsonl'}"
[output]
path = "{folder / 'out.h5'}"
[runtime]
timeout_s = 60.0
[emulation]
target_tpot_s = 0.006
target_ttft_s = 0.01
drafter_tpot_s = 0.0015
drafter_ttft_s = 0.003
acceptance = 0.6
prompt_tokens = 16
""")
    proc = launch(["-m", "dsi_mpi", "run", str(folder / "job.toml")], ranks=3, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(folder / "out.h5")


def stored(path):
    """{(prompt, algorithm): h5 group contents} read straight from the file, not through read_results."""
    out = {}
    with h5py.File(path) as f:
        for name, group in f["prompts"].items():
            for algorithm in ALGORITHMS:
                run = group[algorithm]
                out[int(name), algorithm] = {"events": run["events"][()], "tasks": run["tasks"][()],
                                             "commit_times": run["commit_times"][()], **dict(run.attrs)}
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
        bars = ("drafter_prefill", "draft", "draft_interrupted", "verify", "verify_aborted", "wait")
        want = Counter((int(e["rank"]), EVENT_KINDS[int(e["kind"])]) for e in ev if EVENT_KINDS[int(e["kind"])] in bars)
        got = Counter()                           # stale results are verify events drawn in a lighter shade
        for rank, kinds in d["bars_per_lane"].items():
            for kind, n in kinds.items():
                got[rank, "verify" if kind == "verify_stale" else kind] += n
        assert got == want, d["algorithm"]
        assert d["markers"] == int(np.isin(ev["kind"], [REJECT, CANCEL_SENT]).sum())
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
    assert dist["speedups"]["dsi / si"] == pytest.approx([data[p, "si"]["wall_s"] / data[p, "dsi"]["wall_s"]
                                                          for p in (0, 1)])
    assert len(dist["paths"]) == 2
    meta, records = read_results(results)
    sentences = ex.explain(records, meta)
    assert any(s.startswith("measured: target") and "k = 3, 2 verifier rank(s)" in s for s in sentences)
    assert any(s.startswith("dsi kept") for s in sentences)
