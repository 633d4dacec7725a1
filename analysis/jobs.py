"""How the analysis scripts start a dsi-mpi job: one command line, one environment, one prompts file, one way to
stop a job that outlives its time; and what they share besides: options with a smaller default for --tiny runs
(tests of a script), and the CPU's name for the record."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mpiexec() -> str:
    """MPIEXEC if set, else the venv's own (never mix MPI runtimes), else the one on PATH (a machine whose MPI
    is the system's, e.g. the GPU machine's Open MPI)."""
    here = Path(sys.executable).parent / "mpiexec"
    return os.environ.get("MPIEXEC") or (str(here) if here.exists() else shutil.which("mpiexec") or "mpiexec")


@functools.cache
def launcher_flags(launcher: str) -> tuple[str, ...]:
    """Open MPI's: root allowed when we are root, more ranks than cores allowed, and no binding (with 2 ranks
    or fewer Open MPI binds each to one core, where torch.compile's workers and the rank's threads would all
    share it). MPICH needs none."""
    try:
        version = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    if "Open MPI" not in version and "OpenRTE" not in version:
        return ()
    return ("--oversubscribe", "--bind-to", "none") + (("--allow-run-as-root",) if os.geteuid() == 0 else ())


def job_command(ranks: int, config: str | Path, settings: dict, quiet: bool = False) -> list[str]:
    """`mpiexec -n RANKS python -m dsi_mpi [-q] run CONFIG --set key=value ...` (quiet: warnings and errors only)."""
    launcher = mpiexec()
    command = [launcher, *launcher_flags(launcher), "-n", str(ranks), sys.executable, "-m", "dsi_mpi"]
    command += ["-q", "run"] if quiet else ["run"]
    command.append(str(config))
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    return command


def job_env(fault: str | None = None, threads: int | None = None) -> dict:
    """The caller's environment with `threads` torch threads per rank (default: OMP_NUM_THREADS, else 1), Open
    MPI's settings for root and containers (no cross-memory attach there), and DSI_MPI_FAULT only if given. (The
    package is installed; jobs start in the repository root, whose dsi_mpi `python -m` finds first.)"""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or os.environ.get("OMP_NUM_THREADS", "1")))
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    env.pop("DSI_MPI_FAULT", None)
    if fault:
        env["DSI_MPI_FAULT"] = fault
    return env


def run_bounded(command: list[str], env: dict, seconds: float, quiet: bool = False) -> int | None:
    """Run `command` from the repository root for at most `seconds`: its exit status, or None if it ran out of
    time (then it is stopped: SIGTERM, which mpiexec passes to its ranks, and SIGKILL to its group 10 s later).
    quiet: its stdout (a job's summary table) is dropped; its errors still show."""
    print("+", " ".join(command), file=sys.stderr, flush=True)
    stdout = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=stdout)
    try:
        return proc.wait(timeout=max(seconds, 1.0))
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return None


def emulated_prompts(path: Path, count: int, prefix: str) -> Path:
    """A JSONL prompt set of `count` placeholder prompts (LATENCY EMULATION ignores the text)."""
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "prompt": "emulated"}) + "\n" for i in range(count)))
    return path


def numbers(kind):
    """A comma-separated list of `kind`s, as an argparse type."""
    return lambda text: [kind(x) for x in text.split(",") if x]


def add_sized_options(parser, options) -> None:
    """Options given as (flag, type, default, default with --tiny, help); type "ints" / "floats": a list."""
    for flag, kind, default, tiny, text in options:
        kind = numbers(int) if kind == "ints" else numbers(float) if kind == "floats" else kind
        parser.add_argument(flag, type=kind, default=None, help=f"{text} (default {default}; --tiny: {tiny})")


def sized_defaults(args, options):
    """Fill the options left unset with their default, or with their --tiny one under --tiny."""
    for flag, _, default, tiny, _ in options:
        name = flag[2:].replace("-", "_")
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else default)
    return args


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return ""


def publish(report: dict, lines: list[str], markdown: Path) -> None:
    """A script's table to `markdown` and stdout, then its whole report as stdout's last line (one JSON object)."""
    markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    print(json.dumps(report, default=float), flush=True)
