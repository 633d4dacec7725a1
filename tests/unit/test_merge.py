"""`dsi-mpi merge`: shard files built with the real ResultsWriter (no MPI), merged, read back, refused."""

import json
import os
import subprocess

import h5py
import numpy as np
import pytest

from dsi_mpi.io.config import validate
from dsi_mpi.io.merge import MergeError, main, merge_results
from dsi_mpi.io.prompts import Prompt
from dsi_mpi.io.records import TASK_DTYPE, RunRecord
from dsi_mpi.io.results import ResultsWriter, read_results

ALGORITHMS = ["nonsi", "si", "dsi"]


def config(shard_count=1, shard_index=0, **decoding):
    return validate(
        {
            "models": {"kind": "emulated"},
            "decoding": {"algorithms": ALGORITHMS, **decoding},
            "prompts": {"shard_count": shard_count, "shard_index": shard_index},
            "output": {"path": f"results/shard_{shard_index}.h5"},
        }
    )


def record(algorithm: str, index: int) -> RunRecord:
    rec = RunRecord(
        algorithm,
        index,
        f"p{index}",
        tokens=[index, 7, 8],
        commit_times=[0.1, 0.2, 0.3],
        wall_s=0.3,
        ttft_s=0.1,
        compared=4,
        accepted=2,
        tasks_sent=1,
        tasks_used=1,
    )
    row = np.zeros((), dtype=TASK_DTYPE)  # built by field name: robust to new columns
    row["verifier"], row["n_drafts"], row["computed"], row["reply_s"], row["outcome"] = 1, 3, 3, 0.1, 1
    rec.tasks.append(row.item())
    return rec


def write_shard(path, indices, cfg=None, incomplete=()) -> str:
    """A results file holding complete prompts `indices` and half-written prompts `incomplete`."""
    writer = ResultsWriter(str(path), cfg or config())
    writer.add_metadata(
        {
            "ranks": [{"rank": 0, "host": "h", "role": "drafter+coordinator", "device": "emulated"}],
            "algorithms": ALGORITHMS,
        }
    )
    for index in indices:
        prompt = Prompt(index, f"p{index}", f"prompt {index}")
        for algorithm in ALGORITHMS:
            writer.write_record(prompt, [1, 2, 3], record(algorithm, index))
        writer.mark_complete(prompt)
    for index in incomplete:
        writer.write_record(Prompt(index, f"p{index}", "cut short"), [1, 2], record("nonsi", index))
    writer.close()
    return str(path)


def run_cli(*args, timeout=60) -> subprocess.CompletedProcess:
    """`python -m dsi_mpi ARGS` without MPI, bounded by conftest.launch's timeout."""
    from helpers import launch

    return launch(["-m", "dsi_mpi", *args], timeout=timeout)


def test_merge_copies_complete_prompts_and_skips_incomplete(tmp_path, capsys):
    a = write_shard(tmp_path / "a.h5", [0, 2, 4], config(2, 0), incomplete=[6])
    b = write_shard(tmp_path / "b.h5", [1, 3], config(2, 1))
    out = tmp_path / "merged" / "all.h5"
    assert main([str(out), a, b]) == 0
    said = capsys.readouterr().out
    assert "merged 5 complete prompts from 2 files" in said and "skipped 1 incomplete" in said
    meta, records = read_results(str(out))
    assert sorted({r["prompt_index"] for r in records}) == [0, 1, 2, 3, 4]
    assert len(records) == 5 * len(ALGORITHMS)
    assert json.loads(meta["merged_from"]) == [a, b]
    with h5py.File(a) as first:
        assert meta["config_digest"] == first.attrs["config_digest"]
        assert meta["config_toml"] == first.attrs["config_toml"]
    assert all(r["tokens"] == [r["prompt_index"], 7, 8] for r in records)
    assert all(len(r["tasks"]) == 1 for r in records)
    with h5py.File(out) as f:
        assert "00006" not in f["prompts"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_report_reads_the_merged_file(tmp_path):
    a = write_shard(tmp_path / "a.h5", [0], config(2, 0))
    b = write_shard(tmp_path / "b.h5", [1], config(2, 1))
    out = str(tmp_path / "all.h5")
    merged = run_cli("merge", out, a, b)
    assert merged.returncode == 0, merged.stderr
    report = run_cli("report", out)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "6 records" in report.stdout and "dsi" in report.stdout
    records = json.loads(run_cli("report", out, "--json").stdout)
    assert sorted((r["prompt_index"], r["algorithm"]) for r in records) == sorted(
        (i, a) for i in (0, 1) for a in ALGORITHMS
    )


def refused(capsys, argv, out) -> str:
    """main() must exit 2 with one line on stderr and write no output file."""
    existed = os.path.exists(out)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsi-mpi merge: error: ") and "\n" not in err
    assert os.path.exists(out) == existed
    return err


def test_refuses_files_that_are_not_results(tmp_path, capsys):
    good = write_shard(tmp_path / "good.h5", [0])
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something else"
        f.create_group("prompts")
    out = str(tmp_path / "out.h5")
    assert str(text) in refused(capsys, [out, good, str(text)], out)
    assert str(other) in refused(capsys, [out, good, str(other)], out)
    assert "no such file" in refused(capsys, [out, good, str(tmp_path / "missing.h5")], out)


def test_refuses_a_different_config(tmp_path, capsys):
    a = write_shard(tmp_path / "a.h5", [0], config(2, 0))
    b = write_shard(tmp_path / "b.h5", [1], config(2, 1, lookahead=8))
    out = str(tmp_path / "out.h5")
    err = refused(capsys, [out, a, b], out)
    assert str(b) in err and "config_digest" in err


def test_refuses_a_prompt_complete_in_two_inputs(tmp_path, capsys):
    a = write_shard(tmp_path / "a.h5", [0, 1])
    b = write_shard(tmp_path / "b.h5", [1, 2])
    out = str(tmp_path / "out.h5")
    err = refused(capsys, [out, a, b], out)
    assert str(b) in err and str(a) in err and "prompt 1" in err


def test_a_prompt_incomplete_in_one_input_is_not_a_conflict(tmp_path):
    a = write_shard(tmp_path / "a.h5", [0], incomplete=[1])
    b = write_shard(tmp_path / "b.h5", [1])
    summary = merge_results(tmp_path / "out.h5", [a, b])
    assert summary.prompts == 2 and summary.skipped == {a: 1, b: 0}


def test_refuses_an_existing_output_unless_overwrite(tmp_path, capsys):
    a = write_shard(tmp_path / "a.h5", [0])
    out = tmp_path / "out.h5"
    out.write_text("keep me")
    err = refused(capsys, [str(out), a], str(out))
    assert str(out) in err and "--overwrite" in err
    assert out.read_text() == "keep me"
    assert main(["--overwrite", str(out), a]) == 0
    assert len(read_results(str(out))[1]) == len(ALGORITHMS)


def test_refuses_an_output_that_is_an_input_or_a_repeated_input(tmp_path):
    a = write_shard(tmp_path / "a.h5", [0])
    with pytest.raises(MergeError, match="also an input"):
        merge_results(a, [a], overwrite=True)
    with pytest.raises(MergeError, match="listed twice"):
        merge_results(tmp_path / "out.h5", [a, a])
    with pytest.raises(MergeError, match="no input"):
        merge_results(tmp_path / "out.h5", [])
