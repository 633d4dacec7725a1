"""Reliability under failing ranks (FAULT INJECTION via DSI_MPI_FAULT): the job ends within the watchdog
bound with an error, prompts finished before the fault stay intact and complete, the prompt in flight is
marked incomplete, and a resumed run finishes the rest with the same results."""

import re
import time

import pytest
from helpers import open_when_unlocked, placeholder_prompts, write_job

from dsi_mpi.io.results import is_complete, read_results

EMULATION = {
    "target_tpot_s": 0.002,
    "target_ttft_s": 0.003,
    "drafter_tpot_s": 0.0005,
    "drafter_ttft_s": 0.001,
    "acceptance": 0.6,
    "prompt_tokens": 8,
}


def emulated_job(tmp_path, prompts: int = 6, timeout_s: float = 30.0) -> str:
    return write_job(
        tmp_path,
        prompt_set=placeholder_prompts(prompts),
        models={"kind": "emulated"},
        decoding={"algorithms": ["nonsi", "si", "dsi"], "max_new_tokens": 24, "warmup_prompts": 0},
        emulation=EMULATION,
        runtime={"timeout_s": timeout_s},
    )


def complete_prompts(path) -> dict[int, list]:
    _, records = read_results(str(path))
    return {(r["prompt_index"], r["algorithm"]): r["tokens"] for r in records}


@pytest.mark.parametrize(
    "fault",
    ["rank=1,after=60,kind=raise", "rank=2,after=25,kind=oom", "rank=1,after=60,kind=kill", "rank=0,after=2,kind=kill"],
)
def test_fault_keeps_finished_prompts_and_resume_finishes(run_mpi, tmp_path, fault):
    config = emulated_job(tmp_path)
    start = time.monotonic()
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=3, timeout=120, env={"DSI_MPI_FAULT": fault})
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    if "raise" in fault or "oom" in fault:
        rank = fault.split(",")[0].split("=")[1]
        assert f"error on rank {rank}" in proc.stderr and "injected" in proc.stderr, proc.stderr[-2000:]
    with open_when_unlocked(tmp_path / "out.h5") as f:  # readable after the crash
        flags = {name: is_complete(g) for name, g in f["prompts"].items()}
    done_before = complete_prompts(tmp_path / "out.h5")
    assert 1 <= sum(flags.values()) < 6, flags
    proc = run_mpi(["-m", "dsi_mpi", "run", config, "--set", "output.resume=true"], ranks=3, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming" in proc.stderr
    after = complete_prompts(tmp_path / "out.h5")
    assert len(after) == 6 * 3
    assert all(after[key] == tokens for key, tokens in done_before.items())


def test_silent_rank_trips_the_watchdog(run_mpi, tmp_path):
    config = emulated_job(tmp_path, timeout_s=4.0)
    start = time.monotonic()
    proc = run_mpi(
        ["-m", "dsi_mpi", "run", config], ranks=3, timeout=90, env={"DSI_MPI_FAULT": "rank=2,after=10,kind=hang"}
    )
    assert proc.returncode != 0
    assert time.monotonic() - start < 40
    assert "WatchdogTimeout" in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"waiting for .*rank\(s\) \[[0-9, ]*2\]", proc.stderr), proc.stderr[-2000:]


def test_a_job_that_fails_before_its_first_record_leaves_the_previous_results(run_mpi, tmp_path):
    """output.overwrite = true replaces the old file only once the new job's first record is in: here a verifier
    fails on its first task, in the untimed warm-up (a rank that cannot load its model fails a moment earlier)."""
    config = emulated_job(tmp_path, prompts=2)
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=3, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = complete_prompts(tmp_path / "out.h5")
    again = ["-m", "dsi_mpi", "run", config, "--set", "output.overwrite=true", "--set", "decoding.warmup_prompts=1"]
    proc = run_mpi(again, ranks=3, timeout=90, env={"DSI_MPI_FAULT": "rank=1,after=1,kind=raise"})
    assert proc.returncode != 0 and "injected" in proc.stderr, proc.stderr[-2000:]
    with open_when_unlocked(tmp_path / "out.h5"):
        pass
    assert complete_prompts(tmp_path / "out.h5") == before and len(before) == 2 * 3
