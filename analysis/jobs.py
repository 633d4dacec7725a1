"""How the analysis scripts start a dsi-mpi job: one command line, one environment, one prompts file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def job_command(ranks: int, config: str | Path, settings: dict) -> list[str]:
    """`mpiexec -n RANKS python -m dsi_mpi run CONFIG --set key=value ...` (MPIEXEC overrides the venv's)."""
    mpiexec = os.environ.get("MPIEXEC", str(Path(sys.executable).parent / "mpiexec"))
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "dsi_mpi", "run", str(config)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    return command


def job_env(fault: str | None = None) -> dict:
    """The caller's environment with one thread per rank (unless set) and DSI_MPI_FAULT only if given."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("DSI_MPI_FAULT", None)
    if fault:
        env["DSI_MPI_FAULT"] = fault
    return env


def emulated_prompts(path: Path, count: int, prefix: str) -> Path:
    """A JSONL prompt set of `count` placeholder prompts (LATENCY EMULATION ignores the text)."""
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "prompt": "emulated"}) + "\n" for i in range(count)))
    return path
