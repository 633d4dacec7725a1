"""Shared fixtures: tiny models built once per session, and an MPI launcher that can never hang a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def zero_latency_emulation(**extra) -> dict:
    """An [emulation] section with no latencies (unit tests of the emulated runners)."""
    emu = {"vocab_size": 50, "acceptance": 0.5, "target_ttft_s": 0, "target_tpot_s": 0}
    return emu | {"drafter_ttft_s": 0, "drafter_tpot_s": 0} | extra


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def launch(
    args: list[str], ranks: int | None = None, timeout: float = 180, cwd: Path = ROOT, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python args...` (under the venv's own mpiexec with `ranks` ranks); on timeout kill every
    process of the launch and fail the test. MPICH puts ranks in sessions of their own, so the processes
    are found by a marker in their environment, not by process group."""
    command = [sys.executable, *args]
    if ranks is not None:
        command = [MPIEXEC, "-n", str(ranks), *command]
    marker = uuid.uuid4().hex
    full_env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        PYTHONWARNINGS="ignore",
        DSI_MPI_TEST_LAUNCH=marker,
    )
    full_env.update(env or {})
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: set[int] = set()
    stop = threading.Event()
    watcher = threading.Thread(
        target=lambda: [seen.update(_marked(marker)) for _ in iter(lambda: stop.wait(0.2), True)]
    )
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_marked(marker)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(command)}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    finally:
        stop.set()
        watcher.join()
    _wait_gone(seen | set(_marked(marker)))
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _marked(marker: str) -> list[int]:
    needle = f"DSI_MPI_TEST_LAUNCH={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _kill_marked(marker: str) -> None:
    for pid in _marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    """Running or still exiting (a zombie holds no files any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pids: set[int], grace: float = 10.0) -> None:
    """mpiexec may return while its ranks are still dying (and holding files): wait, then kill leftovers."""
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def run_mpi():
    return launch
