"""The slurm/ sbatch scripts on a real one-node SLURM cluster (local_slurm.py), with emulated-latency jobs.

Skipped when SLURM cannot run here (tests/slurm/install_slurm.sh installs it), except under CI=true,
where that is a failure. Every client command runs with a timeout that kills its process group.
"""

import json
import sys
from pathlib import Path

import h5py
import pytest
from helpers import launch
from sbatch_jobs import ALGORITHMS, emulated_job, sbatch_wait, serve_cluster

from dsi_mpi.io.results import read_results

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A started cluster for the whole session."""
    yield from serve_cluster(cpus=4)


def test_single_node_job_writes_results(slurm_cluster, tmp_path):
    config = emulated_job(tmp_path, n_prompts=2)
    result, job_id, logs = sbatch_wait(
        slurm_cluster, tmp_path, ["--ntasks=3"], "single_node.sbatch", [config, "--set", "decoding.lookahead=3"]
    )
    assert result.returncode == 0, logs
    assert f"python {sys.executable}" in logs and "srun --mpi=pmi2" in logs
    with h5py.File(tmp_path / "out.h5") as f:
        assert f.attrs["slurm_job_id"] == job_id
        assert "lookahead = 3" in f.attrs["config_toml"]  # --set went through sbatch and srun
        assert json.loads(f.attrs["algorithms"]) == ALGORITHMS
        ranks = json.loads(f.attrs["ranks"])
        assert [r["rank"] for r in ranks] == [0, 1, 2]
        assert [r["role"] for r in ranks] == ["drafter+coordinator", "target verifier", "target verifier"]
        assert sorted(f["prompts"]) == ["00000", "00001"]
        for group in f["prompts"].values():
            assert group.attrs["complete"]
            assert sorted(k for k in group if isinstance(group[k], h5py.Group)) == sorted(ALGORITHMS)
            assert all(len(group[a]["tokens"]) == 20 for a in ALGORITHMS)


def test_array_shards_merge_and_resume(slurm_cluster, tmp_path):
    config = emulated_job(tmp_path, n_prompts=3)
    prefix = tmp_path / "shard"
    options = ["--array=0-1", "--ntasks=2"]  # two 2-rank tasks fit the 4-CPU node side by side
    result, _, logs = sbatch_wait(
        slurm_cluster, tmp_path, options, "array.sbatch", [config], env={"OUT_PREFIX": str(prefix)}
    )
    assert result.returncode == 0, logs
    shards = [f"{prefix}_0.h5", f"{prefix}_1.h5"]
    assert [sorted(r["prompt_index"] for r in read_results(s)[1] if r["algorithm"] == "dsi") for s in shards] == [
        [0, 2],
        [1],
    ]
    merged = tmp_path / "merged.h5"
    merge = launch(["-m", "dsi_mpi", "merge", str(merged), *shards], timeout=60)
    assert merge.returncode == 0, merge.stdout + merge.stderr
    meta, records = read_results(str(merged))
    assert sorted((r["prompt_index"], r["algorithm"]) for r in records) == sorted(
        (i, a) for i in range(3) for a in ALGORITHMS
    )
    assert json.loads(meta["merged_from"]) == shards
    report = launch(["-m", "dsi_mpi", "report", str(merged)], timeout=60)
    assert report.returncode == 0 and "9 records" in report.stdout, report.stdout + report.stderr

    for log in tmp_path.glob("job-*.out"):
        log.unlink()
    again, _, logs = sbatch_wait(
        slurm_cluster, tmp_path, options, "array.sbatch", [config], env={"OUT_PREFIX": str(prefix)}
    )
    assert again.returncode == 0, logs
    assert logs.count("already complete") == 2, logs  # a resubmitted array resumes, redoes nothing


def test_array_sweeps_lookahead_and_verifiers(slurm_cluster, tmp_path):
    config = emulated_job(tmp_path, n_prompts=1, decoding={"algorithms": ["dsi"], "max_new_tokens": 10})
    result, _, logs = sbatch_wait(
        slurm_cluster,
        tmp_path,
        ["--array=0-1", "--ntasks=3"],
        "array.sbatch",
        [config],
        env={"OUT_PREFIX": str(tmp_path / "sweep"), "SWEEP_LOOKAHEADS": "2 4", "SWEEP_VERIFIERS": "1"},
    )
    assert result.returncode == 0, logs
    for k in (2, 4):
        meta, records = read_results(str(tmp_path / f"sweep_k{k}_v1.h5"))
        assert f"lookahead = {k}" in meta["config_toml"] and len(json.loads(meta["ranks"])) == 2
        assert [r["prompt_index"] for r in records] == [0]


def test_multi_node_script_runs_on_one_node(slurm_cluster, tmp_path):
    config = emulated_job(tmp_path, n_prompts=1, decoding={"algorithms": ["dsi"]})
    result, _, logs = sbatch_wait(
        slurm_cluster, tmp_path, ["--nodes=1", "--ntasks-per-node=2"], "multi_node.sbatch", [config]
    )
    assert result.returncode == 0, logs
    meta, records = read_results(str(tmp_path / "out.h5"))
    assert len(json.loads(meta["ranks"])) == 2 and len(records) == 1


@pytest.mark.parametrize(
    "script, options, args, words",
    [
        (
            "single_node.sbatch",
            ["--ntasks=2"],
            ["--set", "decoding.lookahed=3"],
            "unknown config key decoding.lookahed",
        ),
        ("array.sbatch", ["--ntasks=2"], [], "not an array task"),
    ],
)
def test_failing_job_fails_sbatch_wait(slurm_cluster, tmp_path, script, options, args, words):
    config = emulated_job(tmp_path, n_prompts=1)
    result, _, logs = sbatch_wait(slurm_cluster, tmp_path, options, script, [config, *args], timeout=60)
    assert result.returncode != 0, logs
    assert words in logs
