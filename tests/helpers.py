"""What the tests share: the MPI launcher that never hangs a test, the one way a test writes a job's config
(dsi_mpi.io.config.write_config, with the tests' defaults), and a few helpers of several test files. The
fixtures that use them are in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import h5py
import pytest

from dsi_mpi.io.config import validate, write_config

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
PROMPTS = [{"id": "p0", "prompt": "def add(a, b):\n    return"}, {"id": "p1", "prompt": "import os\n"}]


def write_prompts(path: Path, prompts: list[dict]) -> Path:
    """A JSONL prompt set: one {"id", "prompt"} per line."""
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


def write_job(tmp_path: Path, model_paths: dict | None = None, prompt_set=PROMPTS, check=True, **sections) -> str:
    """The tests' job config, written to tmp_path/job.toml: the tiny target and its noisy drafter (model_paths:
    the tiny_models fixture; None: no [models] keys but the sections'), nonsi, si, dsi and hf_assisted at k 3
    for 20 tokens on `prompt_set` (written to tmp_path/prompts.jsonl), no untimed warm-up (these tests check
    outputs, not speed), results in tmp_path/out.h5, a 60 s watchdog; `sections` override it key by key
    (check=False: a config the job must refuse, written as it is)."""
    write_prompts(tmp_path / "prompts.jsonl", prompt_set)
    values = {
        "models": {"target": model_paths["target"], "drafter": model_paths["noisy"]} if model_paths else {},
        "decoding": {
            "algorithms": ["nonsi", "si", "dsi", "hf_assisted"],
            "lookahead": 3,
            "max_new_tokens": 20,
            "warmup_prompts": 0,
        },
        "prompts": {"path": str(tmp_path / "prompts.jsonl")},
        "output": {"path": str(tmp_path / "out.h5")},
        "runtime": {"timeout_s": 60.0},
    }
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    return str(write_config(tmp_path / "job.toml", values, check))


def placeholder_prompts(count: int, prefix: str = "q") -> list[dict]:
    """Prompts whose text LATENCY EMULATION ignores."""
    return [{"id": f"{prefix}{i}", "prompt": "x"} for i in range(count)]


def zero_latency_emulation(**extra):
    """An [emulation] section with no latencies (unit tests of the emulated runners)."""
    emu = {"vocab_size": 50, "acceptance": 0.5, "target_ttft_s": 0, "target_tpot_s": 0}
    return validate({"emulation": emu | {"drafter_ttft_s": 0, "drafter_tpot_s": 0} | extra}).emulation


def open_when_unlocked(path, seconds: float = 10.0):
    """A rank killed by the MPI runtime can still hold the file lock for a moment after mpiexec returns."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return h5py.File(path, "r")
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def reference(target_folder: str, prompt_tokens, n: int) -> list[int]:
    """Hugging Face's own greedy `generate`: the tokens every algorithm must write."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target_folder).eval()
    ids = torch.tensor([prompt_tokens])
    return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)[
        0, len(prompt_tokens) :
    ].tolist()


def launch(
    args: list[str], ranks: int | None = None, timeout: float = 180, cwd: Path = ROOT, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python args...` (under the venv's own mpiexec with `ranks` ranks); on timeout, or when the test
    itself is stopped (pytest-timeout), kill every process of the launch (and fail the test). MPICH puts ranks
    in sessions of their own, so the processes are found by a marker in their environment, not by process
    group."""
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
    except BaseException:  # pytest-timeout (or Ctrl-C) ends the test first: the launch must not outlive it
        _kill_marked(marker)
        raise
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
