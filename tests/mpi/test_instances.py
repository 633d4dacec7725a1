"""Several DSI instances in one job (runtime.instances): the same tokens as one instance, prompt for prompt;
a killed or hung rank of one instance ends the job with what was completed on disk, and a resume with another
number of instances finishes it with the same tokens (LATENCY EMULATION, except the real-model test)."""

import json
import re
import time
from pathlib import Path

import h5py
from helpers import open_when_unlocked, placeholder_prompts, write_job

from dsi_mpi.io.results import is_complete, read_results

ROOT = Path(__file__).resolve().parents[2]
EMULATION = {
    "target_tpot_s": 0.004,
    "target_ttft_s": 0.004,
    "drafter_tpot_s": 0.001,
    "drafter_ttft_s": 0.001,
    "prompt_tokens": 8,
    "min_new_tokens": 4,
}


def emulated_job(tmp_path, name: str, prompts: int = 12, timeout_s: float = 30.0) -> str:
    return write_job(
        tmp_path,
        prompt_set=placeholder_prompts(prompts),
        models={"kind": "emulated"},
        decoding={"algorithms": ["nonsi", "dsi"], "max_new_tokens": 24, "warmup_prompts": 0},
        emulation=EMULATION,
        output={"path": str(tmp_path / f"{name}.h5")},
        runtime={"timeout_s": timeout_s},
    )


def tokens_of(path) -> dict:
    return {(r["prompt_index"], r["algorithm"]): r["tokens"] for r in read_results(str(path))[1]}


def test_killed_rank_ends_the_job_and_resume_with_fewer_instances_finishes(run_mpi, tmp_path):
    whole = emulated_job(tmp_path, "whole")  # uninterrupted, one instance
    proc = run_mpi(["-m", "dsi_mpi", "-q", "run", whole], ranks=2, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = tokens_of(tmp_path / "whole.h5")
    assert len(expected) == 12 * 2

    faulty = emulated_job(tmp_path, "faulty")
    start = time.monotonic()
    kill = {"DSI_MPI_FAULT": "rank=4,after=12,kind=kill"}  # instance 1's verifier, a few prompts in
    proc = run_mpi(["-m", "dsi_mpi", "-vv", "run", faulty, "--set", "runtime.instances=4"], ranks=9, env=kill)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60  # the launcher ends the job at once (the watchdog bound is 30 s)
    assert "instance 1: world ranks 3 (pid" in proc.stderr  # the start-up map from pids to instances
    written = {int(i) for i in re.findall(r"prompt (\d+) from instance \d+ written", proc.stderr)}
    with open_when_unlocked(tmp_path / "faulty.h5") as f:
        complete = {int(n) for n, g in f["prompts"].items() if is_complete(g)}
        instances = {int(f["prompts"][f"{i:05d}"].attrs["instance"]) for i in complete}
    assert written and written <= complete and len(complete) < 12, (written, complete)
    assert len(instances) > 1  # several instances' prompts are on disk
    before = tokens_of(tmp_path / "faulty.h5")
    assert all(expected[key] == t for key, t in before.items())

    resume = ["-m", "dsi_mpi", "run", faulty, "--set", "runtime.instances=2", "--set", "output.resume=true"]
    proc = run_mpi(resume, ranks=5, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming: {len(complete)} prompts already complete" in proc.stderr
    assert "instance 1:" in proc.stdout and "throughput:" in proc.stdout  # per-instance tok/s in the summary
    assert tokens_of(tmp_path / "faulty.h5") == expected


def test_killed_stage_of_a_pipelined_instance_ends_the_job_and_one_plain_instance_resumes(run_mpi, tmp_path):
    """2 instances of a drafter + one 2-stage group (7 ranks); the last stage of instance 1 is killed. The job
    ends non-zero within seconds of its last write, every prompt written is complete with the tokens of an
    uninterrupted run, and a resume with G = 1 and no pipeline (another G and P) finishes the file."""
    whole = emulated_job(tmp_path, "whole", prompts=8)
    proc = run_mpi(["-m", "dsi_mpi", "-q", "run", whole], ranks=2, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = tokens_of(tmp_path / "whole.h5")

    faulty = emulated_job(tmp_path, "faulty", prompts=8)
    pipelined = ["--set", "runtime.instances=2", "--set", "runtime.pipeline_stages=2"]
    kill = {"DSI_MPI_FAULT": "rank=6,after=40,kind=kill"}
    proc = run_mpi(["-m", "dsi_mpi", "-vv", "run", faulty, *pipelined], ranks=7, env=kill)
    ended = time.time()
    assert proc.returncode != 0
    assert "instance 1: world ranks 4 (pid" in proc.stderr and "drafter 4, pipeline groups [5, 6] on" in proc.stderr
    written = {int(i) for i in re.findall(r"prompt (\d+) from instance \d+ written", proc.stderr)}
    with open_when_unlocked(tmp_path / "faulty.h5") as f:
        layout = json.loads(f.attrs["scheduler"])["layout"]
        groups = f["prompts"]
        complete = {int(n) for n, g in groups.items() if is_complete(g)}
        last_write = max(
            groups[f"{i:05d}"].attrs["job_start"] + groups[f"{i:05d}"].attrs["finished_s"] for i in complete
        )
    assert [(e["drafter"], [g["stages"] for g in e["groups"]]) for e in layout] == [(1, [[2, 3]]), (4, [[5, 6]])]
    assert written and written <= complete and len(complete) < 8, (written, complete)
    assert ended - last_write < 10, ended - last_write  # the launcher's end, not the watchdog's (30 s)
    assert all(expected[key] == t for key, t in tokens_of(tmp_path / "faulty.h5").items())

    proc = run_mpi(["-m", "dsi_mpi", "run", faulty, "--set", "output.resume=true"], ranks=2, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming: {len(complete)} prompts already complete" in proc.stderr
    assert tokens_of(tmp_path / "faulty.h5") == expected


def test_hung_rank_is_named_with_its_instance(run_mpi, tmp_path):
    config = emulated_job(tmp_path, "hung", prompts=8, timeout_s=3.0)
    hang = {"DSI_MPI_FAULT": "rank=4,after=6,kind=hang"}  # instance 1's verifier stops answering
    start = time.monotonic()
    proc = run_mpi(["-m", "dsi_mpi", "run", config, "--set", "runtime.instances=2"], ranks=5, timeout=90, env=hang)
    assert proc.returncode != 0
    assert time.monotonic() - start < 40
    assert "WatchdogTimeout" in proc.stderr, proc.stderr[-3000:]
    assert re.search(r"instance 1, its rank 0 \(instance ranks to world ranks: 0=3, 1=4\) failed", proc.stderr)
    with h5py.File(tmp_path / "hung.h5") as f:  # closed whole by the scheduler before the abort
        assert any(is_complete(g) for g in f["prompts"].values())


def test_two_instances_of_the_default_pair_write_one_instance_tokens(run_mpi, tmp_path):
    models = {"target": str(ROOT / "inputs/models/target"), "noisy": str(ROOT / "inputs/models/drafter")}
    sections = {
        "decoding": {"algorithms": ["dsi"], "lookahead": 3, "max_new_tokens": 10, "warmup_prompts": 0},
        "prompts": {"path": str(ROOT / "inputs/prompts/default.jsonl"), "limit": 3},
    }
    one = write_job(tmp_path, models, output={"path": str(tmp_path / "one.h5")}, **sections)
    proc = run_mpi(["-m", "dsi_mpi", "-q", "run", one], ranks=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = write_job(tmp_path, models, output={"path": str(tmp_path / "two.h5")}, **sections)
    proc = run_mpi(["-m", "dsi_mpi", "-q", "run", two, "--set", "runtime.instances=2"], ranks=5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected, got = tokens_of(tmp_path / "one.h5"), tokens_of(tmp_path / "two.h5")
    assert len(expected) == 3 and got == expected
    with h5py.File(tmp_path / "two.h5") as f:
        layout = json.loads(f.attrs["scheduler"])["layout"]
        assert [entry["ranks"] for entry in layout] == [[1, 2], [3, 4]]
    report = run_mpi(["-m", "dsi_mpi", "report", str(tmp_path / "two.h5")], timeout=60)
    assert report.returncode == 0 and "instance 0:" in report.stdout, report.stdout + report.stderr
