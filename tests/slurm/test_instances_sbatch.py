"""slurm/instances.sbatch on a real two-node SLURM (two slurmd on localhost, local_slurm.py): G instances
placed one per node, one results file; a killed rank fails the job, and a resubmitted job resumes it; with
PIPELINE_STAGES, instances of a drafter + a pipelined group, each on one node."""

import json

import h5py
import pytest
from sbatch_jobs import emulated_job, sbatch_wait, serve_cluster

from dsi_mpi.io.results import is_complete, read_results

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def two_nodes():
    """Two emulated nodes (one slurmd each) on this machine."""
    yield from serve_cluster(cpus=3, nodes=2)


def test_instances_over_two_nodes_fail_on_a_killed_rank_and_resume(two_nodes, tmp_path):
    config = emulated_job(tmp_path, n_prompts=8, decoding={"algorithms": ["dsi"]}, emulation={"min_new_tokens": 4})
    options = ["--nodes=2", "--ntasks-per-node=2"]  # 2 instances of 2 ranks, one per node, + the scheduler
    kill = {"DSI_MPI_FAULT": "rank=4,after=8,kind=kill"}  # instance 1's verifier, on the second node
    result, _, logs = sbatch_wait(two_nodes, tmp_path, options, "instances.sbatch", [config], env=kill)
    assert result.returncode != 0, logs
    assert "2 instances x 2 ranks + 1 scheduler on 2 nodes" in logs
    with h5py.File(tmp_path / "out.h5") as f:
        layout = json.loads(f.attrs["scheduler"])["layout"]
        done_before = sum(is_complete(g) for g in f["prompts"].values())
    assert [(e["ranks"], e["hosts"]) for e in layout] == [([1, 2], ["n1", "n1"]), ([3, 4], ["n2", "n2"])], layout
    assert "spans nodes" not in logs and 1 <= done_before < 8, logs

    for log in tmp_path.glob("job-*.out"):
        log.unlink()
    again, _, logs = sbatch_wait(
        two_nodes, tmp_path, options, "instances.sbatch", [config, "--set", "output.resume=true"]
    )
    assert again.returncode == 0, logs
    assert f"resuming: {done_before} prompts already complete" in logs
    _, records = read_results(str(tmp_path / "out.h5"))
    assert sorted(r["prompt_index"] for r in records) == list(range(8))
    assert {h for r in records for h in r["instance_hosts"]} == {"n1", "n2"}


def test_pipelined_instances_over_two_nodes_keep_each_instance_on_its_node(two_nodes, tmp_path):
    config = emulated_job(tmp_path, n_prompts=4, decoding={"algorithms": ["nonsi", "dsi"]})
    options = ["--nodes=2", "--ntasks-per-node=3"]  # 2 instances of a drafter + one 2-stage group, + the scheduler
    result, _, logs = sbatch_wait(
        two_nodes, tmp_path, options, "instances.sbatch", [config], env={"PIPELINE_STAGES": "2"}
    )
    assert result.returncode == 0, logs
    assert "2 instances x 3 ranks (pipelined verifier groups of 2 stages) + 1 scheduler on 2 nodes" in logs
    assert "drafter 4, pipeline groups [5, 6] on n2" in logs and "spans nodes" not in logs, logs
    meta, records = read_results(str(tmp_path / "out.h5"))
    layout = [(e["drafter"], e["groups"]) for e in json.loads(meta["scheduler"])["layout"]]
    assert layout == [
        (1, [{"stages": [2, 3], "hosts": ["n1", "n1"]}]),
        (4, [{"stages": [5, 6], "hosts": ["n2", "n2"]}]),
    ], layout
    assert sorted((r["prompt_index"], r["algorithm"]) for r in records) == [
        (i, a) for i in range(4) for a in ("dsi", "nonsi")
    ]
    by_prompt = {}
    for r in records:
        by_prompt.setdefault(r["prompt_index"], []).append(r["tokens"])
    assert all(a == b for a, b in by_prompt.values())  # nonsi through the group, dsi: the same tokens
