"""What the SLURM tests share: a local cluster for a fixture (started and stopped by PID), `sbatch --wait` of
one of slurm/'s scripts, and the tiny emulated job they submit (written by dsi_mpi.io.config.write_config)."""

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from local_slurm import LocalSlurm

from dsi_mpi.io.config import write_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "slurm"
ALGORITHMS = ["nonsi", "si", "dsi"]


def remove_stale_mpich_segments() -> int:
    """Delete MPICH's shared-memory segments (/dev/shm/mpich_shm_*) that no live process maps: ranks killed by
    the fault tests leave theirs behind, and late in a full suite a SLURM job's MPI start-up then failed in
    PMI2 / UCX's address exchange (three runs in a row here with 117 of them left; never on a clean /dev/shm)."""
    shm = Path("/dev/shm")
    names = {p.name for p in shm.glob("mpich_shm_*")}
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        names = {n for n in names if n not in text}
    for name in names:
        (shm / name).unlink(missing_ok=True)
    return len(names)


def serve_cluster(**options):
    """The body of a cluster fixture: start a LocalSlurm(**options), yield it, and stop its daemons by PID
    even when a test fails or SIGTERM comes; skip where SLURM cannot start here (fail under CI)."""
    remove_stale_mpich_segments()
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


def _interrupt(signum, frame):
    """SIGTERM (a CI time-out, `timeout`) ends the session like Ctrl-C, so the daemons are still stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def emulated_job(tmp_path: Path, n_prompts: int, **sections) -> Path:
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
    return write_config(tmp_path / "job.toml", values)


def sbatch_wait(
    cluster: LocalSlurm,
    tmp_path: Path,
    options: list[str],
    script: str,
    args: list,
    env: dict | None = None,
    timeout: float = 100,
):
    """`sbatch --wait OPTIONS slurm/SCRIPT ARGS` from the repo root; returns (result, job id, job logs). A job whose
    MPI start-up itself failed (MPICH's PMI2 / UCX address exchange on the emulated nodes, before any dsi-mpi
    code runs: seen now and then late in a full suite) is submitted once more, and says so in its logs."""
    for attempt in (1, 2):
        result, job, logs = _sbatch_once(cluster, tmp_path, options, script, args, env, timeout)
        if attempt == 2 or MPI_INIT_FAILED not in logs:
            return result, job, logs if attempt == 1 else f"(MPI start-up failed once; submitted again)\n{logs}"
        for log in tmp_path.glob("job-*.out"):
            log.unlink()


MPI_INIT_FAILED = "Fatal error in internal_Init_thread"


def _sbatch_once(cluster, tmp_path, options, script, args, env, timeout):
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
