"""Shared fixtures: tiny models built once per session, and an MPI launcher that can never hang a test."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from tiny_models import build_tiny_models
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def launch(args: list[str], ranks: int | None = None, timeout: float = 180, cwd: Path = ROOT,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python args...` (under the venv's own mpiexec with `ranks` ranks) in a new process group;
    on timeout kill the whole group and fail the test."""
    command = [sys.executable, *args]
    if ranks is not None:
        command = [MPIEXEC, "-n", str(ranks), *command]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                    TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PYTHONWARNINGS="ignore")
    full_env.update(env or {})
    proc = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(command)}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.fixture
def run_mpi():
    return launch
