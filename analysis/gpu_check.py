"""The device check: the paper's model shapes, eager vs compiled, and nonsi / si / dsi, in one command.

usage: PYTHONPATH=. python analysis/gpu_check.py [--tiny] [--verifiers 2] [--out DIR]
       (analysis/gpu_check.sh runs it with the environment the GPU machine needs)

1. Builds random-weight Llama models from the configs in inputs/models/paper_shapes (Vicuna-7B's shape as
   target, LLaMA-68M's as drafter; --tiny: the same configs shrunk, for a CPU test). No downloads.
2. Per-token decode latency of each, eager (HF, dynamic cache) and compiled (static cache, torch.compile,
   CUDA graphs on a GPU), measured interleaved in this process, next to the HBM floor: bytes of weights /
   the GPU's memory bandwidth (a table keyed by nvidia-smi's GPU name; none on a CPU).
3. nonsi, si and dsi through the real MPI job with EMULATED ACCEPTANCE: every forward is a real compiled
   forward of those models, the drafts stand i.i.d. with probability 0.8 (emulation.forwards = "model").
Prints a table and one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "inputs/models/paper_shapes"
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, vocab_size=512)
BANDWIDTH_TB_S = {"H200": 4.8, "H100 SXM": 3.35, "H100 NVL": 3.9, "H100": 2.0, "A100": 2.0, "L40S": 0.864}
ACCEPTANCE = 0.8  # EMULATED: i.i.d. probability that a draft stands


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def bandwidth(name: str) -> float | None:
    """Bytes per second of the named GPU's HBM, from the longest matching table key."""
    keys = [k for k in BANDWIDTH_TB_S if all(part in name for part in k.split())]
    return BANDWIDTH_TB_S[max(keys, key=len)] * 1e12 if keys else None


def model_folders(tiny: bool, work: Path) -> dict[str, Path]:
    """The committed configs, or (tiny) copies shrunk to a CPU test's size."""
    folders = {"target": SHAPES / "vicuna-7b", "drafter": SHAPES / "llama-68m"}
    if not tiny:
        return folders
    for role, folder in folders.items():
        config = json.loads((folder / "config.json").read_text())
        config.update(TINY, num_hidden_layers=4 if role == "target" else 1)
        (work / role).mkdir(parents=True, exist_ok=True)
        (work / role / "config.json").write_text(json.dumps(config))
        folders[role] = work / role
    return folders


def latency(folder: Path, device: str, dtype: str, segments: int, steps: int) -> dict:
    """ms per token of one-token decode steps after a 32-token prompt, eager and compiled, interleaved (only the
    one-token shape is compiled here: the prompt runs token by token)."""
    import torch

    from dsi_mpi.backends.compiled import CompiledRunner
    from dsi_mpi.backends.hf import HFRunner
    from dsi_mpi.backends.loading import _load_model

    dev = torch.device(device)
    model = _load_model(str(folder), "model", {"dtype": dtype}, dev, random_weights=True).eval()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    eager = HFRunner(model)
    t0 = time.perf_counter()
    compiled = CompiledRunner(model, capacity=64 + steps, segments=segments, max_bucket=1)
    load_s = time.perf_counter() - t0
    times = {"eager": [], "compiled": []}
    prompt = list(range(1, 33))
    for _ in range(3):  # rounds, alternating which backend goes first
        for name, runner in (("eager", eager), ("compiled", compiled)):
            runner.reset()
            runner.forward(prompt, 1)
            sync(dev)
            start = time.perf_counter()
            for i in range(steps):
                runner.forward([i % 100 + 1], 1)
            sync(dev)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    return {
        "weight_bytes": params,
        "eager_ms": min(times["eager"]),
        "compiled_ms": min(times["compiled"]),
        "compile_s": compiled.compile_info["compile_s"],
        "warmup_s": compiled.compile_info["warmup_s"],
        "load_and_compile_s": round(load_s, 1),
    }


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def mpi_command(ranks: int) -> tuple[list[str], dict]:
    """The venv's mpiexec if there is one (never mix MPI runtimes), else the one on PATH; Open MPI as root
    needs its flags."""
    here = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(here) if here.exists() else shutil.which("mpiexec") or "mpiexec"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [mpiexec, "-n", str(ranks)]
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        command += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return command, env


def run_algorithms(folders, args, device: str, dtype: str, work: Path) -> dict:
    """nonsi, si, dsi in one job, EMULATED ACCEPTANCE over real compiled forwards."""
    from dsi_mpi.io.results import read_results
    from dsi_mpi.reporting import metrics as mt

    out = work / "gpu_check.h5"
    settings = {
        "models.kind": '"emulated"',
        "models.target": json.dumps(str(folders["target"])),
        "models.drafter": json.dumps(str(folders["drafter"])),
        "models.device": json.dumps(device),
        "models.dtype": json.dumps(dtype),
        "models.backend": '"compiled"',
        "models.compile_segments": str(args.segments),
        "models.compile_max_bucket": str(args.max_bucket),
        "emulation.forwards": '"model"',
        "emulation.acceptance": str(ACCEPTANCE),
        "emulation.vocab_size": "500",
        "emulation.prompt_tokens": str(args.prompt_tokens),
        "decoding.algorithms": '["nonsi", "si", "dsi"]',
        "decoding.lookahead": str(args.lookahead),
        "decoding.max_new_tokens": str(args.new_tokens),
        "decoding.warmup_prompts": "1",
        "prompts.limit": str(args.prompts),
        "output.path": json.dumps(str(out)),
        "output.overwrite": "true",
    }
    command, env = mpi_command(1 + args.verifiers)
    command += [sys.executable, "-m", "dsi_mpi", "run", str(ROOT / "inputs/configs/default.toml")]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    print("+", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, env=env, cwd=ROOT, timeout=args.timeout)
    meta, records = read_results(str(out))
    result = {
        a: {k: m[k] for k in ("ms_per_token", "acceptance", "speedup_vs_nonsi", "speedup_vs_si")}
        for a, m in mt.compare(records, args.verifiers).items()
    }
    backends = meta.get("backends") or "[]"
    result["backends"] = json.loads(backends) if isinstance(backends, str) else backends
    return result


INT_OPTIONS = (  # flag, default, help
    ("--verifiers", 2, "verifier ranks"),
    ("--segments", 1, "models.compile_segments of the target (1: one CUDA graph)"),
    ("--max-bucket", 8, "models.compile_max_bucket"),
    ("--lookahead", 5, "drafts per block (fixed k: the check times a known shape)"),
    ("--prompts", 2, "emulated prompts"),
    ("--prompt-tokens", 64, "tokens per prompt"),
    ("--new-tokens", 64, "tokens generated per prompt"),
    ("--steps", 50, "decode steps per latency measurement"),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (a test of this script)")
    for flag, default, text in INT_OPTIONS:
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument("--timeout", type=float, default=420, help="seconds the MPI job may take")
    parser.add_argument("--out", default="", help="folder for the results file (default: a temporary one)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1 if args.tiny else min(4, os.cpu_count() or 1))
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    name = gpu_name() if device == "cuda" else ""
    bw = bandwidth(name)
    work = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    folders = model_folders(args.tiny, work)
    started = time.perf_counter()
    report = {"device": name or device, "dtype": dtype, "hbm_bytes_per_s": bw, "tiny": args.tiny, "models": {}}
    for role, folder in folders.items():
        m = latency(folder, device, dtype, args.segments if role == "target" else 1, args.steps)
        gc.collect()  # free this model before the job's ranks build theirs
        if device == "cuda":
            torch.cuda.empty_cache()
        m["hbm_floor_ms"] = m["weight_bytes"] / bw * 1e3 if bw else None
        m["compiled_vs_floor"] = m["compiled_ms"] / m["hbm_floor_ms"] if bw else None
        report["models"][role] = m
        print(f"{role}: {m}", file=sys.stderr, flush=True)
    t, d = report["models"]["target"], report["models"]["drafter"]
    report["c_eager"] = d["eager_ms"] / t["eager_ms"]
    report["c_compiled"] = d["compiled_ms"] / t["compiled_ms"]
    report["algorithms_emulated_acceptance"] = run_algorithms(folders, args, device, dtype, work)
    report["acceptance_emulated_iid"] = ACCEPTANCE
    report["total_s"] = round(time.perf_counter() - started, 1)
    print_table(report)
    print(json.dumps(report, default=float), flush=True)
    return 0


def print_table(r: dict) -> None:
    print(f"device {r['device']} ({r['dtype']}), HBM {r['hbm_bytes_per_s'] or 'unknown'} B/s")
    print(f"{'model':8} {'eager ms/tok':>13} {'compiled ms/tok':>16} {'HBM floor ms':>13} {'compile s':>10}")
    for role, m in r["models"].items():
        floor = f"{m['hbm_floor_ms']:.3f}" if m["hbm_floor_ms"] else "n/a"
        print(f"{role:8} {m['eager_ms']:13.3f} {m['compiled_ms']:16.3f} {floor:>13} {m['compile_s']:10.1f}")
    print(f"c = drafter/target: eager {r['c_eager']:.3f}, compiled {r['c_compiled']:.3f}")
    print(f"EMULATED ACCEPTANCE (i.i.d. {r['acceptance_emulated_iid']}), real compiled forwards:")
    print(f"{'algorithm':10} {'ms/token':>9} {'vs nonsi':>9} {'vs si':>7}")
    for name in ("nonsi", "si", "dsi"):
        a = r["algorithms_emulated_acceptance"].get(name)
        if a:
            print(f"{name:10} {a['ms_per_token']:9.3f} {a['speedup_vs_nonsi']:9.2f} {a['speedup_vs_si']:7.2f}")


if __name__ == "__main__":
    sys.exit(main())
