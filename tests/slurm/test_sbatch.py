"""The slurm/ sbatch scripts on a real one-node SLURM cluster (local_slurm.py), with emulated-latency jobs.

Skipped when SLURM cannot run here (tests/slurm/install_slurm.sh installs it), except under CI=true,
where that is a failure. Every client command runs with a timeout that kills its process group.
"""

import json
import os
import re
import signal
import sys
from pathlib import Path

import h5py
import pytest
from conftest import launch
from local_slurm import LocalSlurm

from dsi_mpi.io.results import read_results

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "slurm"
ALGORITHMS = ["nonsi", "si", "dsi"]
pytestmark = pytest.mark.timeout(150)


def serve_cluster(**options):
    """The body of a cluster fixture: start a LocalSlurm(**options), yield it, and stop its daemons by PID
    even when a test fails or SIGTERM comes; skip where SLURM cannot start here (fail under CI)."""
    cluster = LocalSlurm(**options)
    try:
        cluster.start()
    except BaseException as err:  # noqa: BLE001 - whatever stops SLURM here: clean up, say why
        cluster.stop()
        if not isinstance(err, Exception):
            raise
        reason = f"local SLURM cluster unavailable: {type(err).__name__}: {err}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield cluster
    finally:
        signal.signal(signal.SIGTERM, previous)
        leftovers = cluster.stop()
        if leftovers:
            print(f"local SLURM: killed {len(leftovers)} leftover job processes: {leftovers}", file=sys.stderr)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A started cluster for the whole session."""
    yield from serve_cluster(cpus=4)


def _interrupt(signum, frame):
    """SIGTERM (a CI time-out, `timeout`) ends the session like Ctrl-C, so the daemons are still stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def write_config(tmp_path: Path, n_prompts: int, **sections) -> Path:
    """A tiny emulated job: n_prompts prompts, 20 tokens, millisecond latencies."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt {i}"}) + "\n" for i in range(n_prompts)))
    values = {
        "models": {"kind": "emulated"},
        "decoding": {"algorithms": ALGORITHMS, "max_new_tokens": 20, "warmup_prompts": 0},
        "emulation": {
            "target_ttft_s": 0.004,
            "target_tpot_s": 0.002,
            "drafter_ttft_s": 0.001,
            "drafter_tpot_s": 0.0005,
            "prompt_tokens": 8,
        },
        "prompts": {"path": str(prompts)},
        "output": {"path": str(tmp_path / "out.h5")},
        "runtime": {"timeout_s": 30.0},
    }
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    text = "".join(f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kv.items()) for s, kv in values.items())
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def sbatch_wait(
    cluster: LocalSlurm,
    tmp_path: Path,
    options: list[str],
    script: str,
    args: list,
    env: dict | None = None,
    timeout: float = 100,
):
    """`sbatch --wait OPTIONS slurm/SCRIPT ARGS` from the repo root; returns (result, job id, job logs)."""
    result = cluster.client(
        ["sbatch", "--wait", f"--output={tmp_path}/job-%A_%a.out", *options, str(SCRIPTS / script), *map(str, args)],
        timeout=timeout,
        cwd=ROOT,
        env={"DSI_MPI_PYTHON": sys.executable, **(env or {})},
    )
    found = re.search(r"Submitted batch job (\d+)", result.stdout)
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp_path.glob("job-*.out"))
    )
    return result, (found.group(1) if found else None), f"sbatch: {result.stderr.strip()}\n{logs}"


def test_single_node_job_writes_results(slurm_cluster, tmp_path):
    config = write_config(tmp_path, n_prompts=2)
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
    config = write_config(tmp_path, n_prompts=3)
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
    config = write_config(tmp_path, n_prompts=1, decoding={"algorithms": ["dsi"], "max_new_tokens": 10})
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
    config = write_config(tmp_path, n_prompts=1, decoding={"algorithms": ["dsi"]})
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
    config = write_config(tmp_path, n_prompts=1)
    result, _, logs = sbatch_wait(slurm_cluster, tmp_path, options, script, [config, *args], timeout=60)
    assert result.returncode != 0, logs
    assert words in logs
