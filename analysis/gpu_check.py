"""The device check: the paper's model shapes, eager vs compiled, and nonsi / si / dsi, within a time budget.

usage: python -m analysis.gpu_check [--tiny] [--out DIR] [--budget 330] [--verifiers 2]
       [--acceptance 0.8,0.6] [--buckets 1,8] ...   (analysis/gpu_check.sh runs it, then analysis/cpu_parallelism.py)

1. Builds random-weight Llama models from the configs in inputs/models/paper_shapes (Vicuna-7B's shape as
   target, LLaMA-68M's as drafter, bfloat16; --tiny: the same configs shrunk, float32 on the CPU, for a test).
2. Per-token greedy decode latency of each, eager (HF, dynamic cache) and compiled (static cache, torch.compile,
   CUDA graphs on a GPU; the one-token shape only), interleaved, in a child process of its own (so that this
   process never holds GPU memory or CUDA graphs), next to the HBM floor: bytes of weights / the GPU's memory
   bandwidth (a table keyed by nvidia-smi's name, and the bandwidth the device's own clock and bus width give).
   Whether eager and compiled chose the same tokens, and the first place they did not.
3. nonsi, si and dsi through the real MPI job with EMULATED ACCEPTANCE at each --acceptance (i.i.d.), every
   forward a real compiled forward of those models, compiling only the --buckets the job uses.
Every phase adds to DIR/gpu_check.json the moment it ends, and each job gets only the time left of --budget,
so a run cut short keeps what it measured. At the end a table (also DIR/gpu_check.md) and, as the last line of
stdout, the whole report as one JSON object. Ranks sharing one GPU are named: their si and dsi figures are a
functional check (they take turns on the GPU), not a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from analysis.jobs import (
    ROOT,
    add_sized_options,
    cpu_model,
    job_command,
    job_env,
    publish,
    run_bounded,
    sized_defaults,
)

SHAPES = ROOT / "inputs/models/paper_shapes"
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, vocab_size=512)
# HBM bandwidth, TB/s, by the parts of nvidia-smi's name (all must appear; the longest match wins). NVIDIA's data
# sheets: H100 SXM5 (named "H100 80GB HBM3") 3.35, H100 NVL 3.9, H100 PCIe (HBM2e) 2.0, H200 4.8, A100 80GB 2.0
# (SXM4 2.04, PCIe 1.94), A100 40GB 1.56, L40S 0.864. No bare "H100": an unknown variant gets no floor.
BANDWIDTH_TB_S = {
    "H200": 4.8,
    "H100 HBM3": 3.35,
    "H100 SXM": 3.35,
    "H100 NVL": 3.9,
    "H100 PCIe": 2.0,
    "A100 80GB": 2.0,
    "A100": 1.56,
    "L40S": 0.864,
}
MARGIN_S = 15  # of the budget, kept for writing the report after the last phase


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_memory_mib() -> dict:
    """Used and total memory of GPU 0 as nvidia-smi sees it (this process holds none)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split(",")
        return {"used_mib": int(out[0]), "total_mib": int(out[1])}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}


def bandwidth(name: str) -> float | None:
    """Bytes per second of the named GPU's HBM, from the longest matching BANDWIDTH_TB_S key."""
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


# ---------------------------------------------------------------------------------------- phase 2 (child process)
def decode(runner, prompt: list[int], steps: int) -> tuple[float, list[int], list[float]]:
    """Greedy decoding of `steps` tokens after `prompt`: ms per token, the tokens, the top-2 margin of each."""
    runner.reset()
    logits = runner.forward(prompt, 1)
    tokens, margins = [], []
    start = time.perf_counter()
    for _ in range(steps):
        top = logits[-1].float().topk(2)
        tokens.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        logits = runner.forward(tokens[-1:], 1)  # ends with a device sync (ModelRunner.forward)
    return (time.perf_counter() - start) / steps * 1e3, tokens, margins


def latency(folder: Path, device: str, dtype: str, segments: int, steps: int) -> dict:
    """ms per token, eager and compiled, best of 3 interleaved rounds of greedy decoding after a 32-token prompt
    (which the compiled runner takes one token at a time: only that shape is compiled), and whether both chose
    the same tokens."""
    import torch

    from dsi_mpi.backends.compiled import CompiledRunner
    from dsi_mpi.backends.cpu import resolve_dtype
    from dsi_mpi.backends.hf import HFRunner
    from dsi_mpi.backends.loading import load_model

    dev = torch.device(device)
    model = load_model(str(folder), "model", resolve_dtype(dtype, dev.type), dev, random_weights=True).eval()
    eager = HFRunner(model)
    t0 = time.perf_counter()
    compiled = CompiledRunner(model, capacity=64 + steps, segments=segments, max_bucket=1)
    load_s = time.perf_counter() - t0
    times, tokens, margins = {"eager": [], "compiled": []}, {}, {}
    for _ in range(3):
        for name, runner in (("eager", eager), ("compiled", compiled)):
            ms, tokens[name], margins[name] = decode(runner, list(range(1, 33)), steps)
            times[name].append(ms)
    same = [a == b for a, b in zip(tokens["eager"], tokens["compiled"], strict=True)]
    first = None if all(same) else same.index(False)
    return {
        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "eager_ms": min(times["eager"]),
        "compiled_ms": min(times["compiled"]),
        "compile_s": compiled.compile_info["compile_s"],
        "warmup_s": compiled.compile_info["warmup_s"],
        "load_and_compile_s": round(load_s, 1),
        "tokens_equal": all(same),
        "first_difference": None if first is None else {"step": first, "eager_top2_margin": margins["eager"][first]},
        **device_bandwidth(dev),
    }


def device_bandwidth(dev) -> dict:
    """The memory bandwidth the device reports (2 x memory clock x bus width, as CUDA's deviceQuery computes
    it), to set beside the name table's; nothing on a CPU or where torch does not expose them."""
    import torch

    if dev.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(dev)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return {"device_bytes_per_s": 2 * clock_khz * 1e3 * bus_bits / 8} if clock_khz and bus_bits else {}


def latency_child(args) -> int:
    import torch

    torch.set_num_threads(1 if args.tiny else min(4, os.cpu_count() or 1))
    device, dtype = device_and_dtype(args.tiny)
    folder = model_folders(args.tiny, Path(args.out))[args.role]
    result = latency(folder, device, dtype, args.segments if args.role == "target" else 1, args.steps)
    Path(args.out, f"latency_{args.role}.json").write_text(json.dumps(result))
    return 0


def device_and_dtype(tiny: bool) -> tuple[str, str]:
    return ("cpu", "float32") if tiny or not gpu_name() else ("cuda", "bfloat16")


# ---------------------------------------------------------------------------------------- the phases
def latency_phase(role: str, args, seconds: float, bw: float | None) -> dict:
    """Phase 2 for one model, in a child process, within `seconds`."""
    path = Path(args.out, f"latency_{role}.json")
    path.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--phase", "latency", "--role", role, "--out", args.out]
    command += ["--steps", str(args.steps), "--segments", str(args.segments)] + (["--tiny"] if args.tiny else [])
    status = run_bounded(command, job_env(), seconds)
    if status != 0 or not path.exists():
        return {"error": f"ran out of its {seconds:.0f} s" if status is None else f"exit status {status}"}
    m = json.loads(path.read_text())
    bw = bw or m.get("device_bytes_per_s")
    m["hbm_floor_ms"] = m["weight_bytes"] / bw * 1e3 if bw else None
    m["compiled_vs_floor"] = m["compiled_ms"] / m["hbm_floor_ms"] if bw else None
    return m


def algorithms_phase(folders, args, device: str, dtype: str, acceptance: float, seconds: float) -> dict:
    """nonsi, si and dsi in one job, EMULATED ACCEPTANCE at `acceptance` over real compiled forwards, within
    `seconds` (the job's own watchdog too: waits for ranks still compiling must not trip it)."""
    from dsi_mpi.io.results import read_results
    from dsi_mpi.reporting import metrics as mt

    out = Path(args.out, f"gpu_check_a{acceptance}.h5")
    models = {"target": str(folders["target"]), "drafter": str(folders["drafter"]), "device": device, "dtype": dtype}
    settings = {f"models.{k}": json.dumps(v) for k, v in models.items()} | {
        "models.kind": '"emulated"',
        "models.backend": '"compiled"',
        "models.compile_segments": str(args.segments),
        "models.compile_buckets": json.dumps(args.buckets),
        "emulation.forwards": '"model"',
        "emulation.acceptance": str(acceptance),
        "emulation.vocab_size": "500",
        "emulation.prompt_tokens": str(args.prompt_tokens),
        "decoding.algorithms": '["nonsi", "si", "dsi"]',
        "decoding.lookahead": str(args.lookahead),
        "decoding.max_new_tokens": str(args.new_tokens),
        "decoding.warmup_prompts": "1",
        "prompts.limit": str(args.prompts),
        "output.path": json.dumps(str(out)),
        "output.overwrite": "true",
        "runtime.timeout_s": str(round(max(seconds, 60.0))),
    }
    command = job_command(1 + args.verifiers, ROOT / "inputs/configs/default.toml", settings)
    status = run_bounded(command, job_env(), seconds)
    if status != 0:
        return {"error": f"ran out of its {seconds:.0f} s" if status is None else f"exit status {status}"}
    meta, records = read_results(str(out))
    figures = mt.compare(records, args.verifiers)
    keys = ("ms_per_token", "acceptance", "speedup_vs_nonsi", "speedup_vs_si", "prompts")
    result = {a: {k: f[k] for k in keys} for a, f in figures.items()}
    result["backends"] = json.loads(meta.get("backends") or "[]")
    result["shared_gpus"] = mt.shared_gpus(mt.rank_table(meta))
    return result


def save(report: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=float))


def run_phases(args) -> dict:
    started = time.monotonic()
    left = lambda: started + args.budget - MARGIN_S - time.monotonic()  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = device_and_dtype(args.tiny)
    name = gpu_name() if device == "cuda" else ""
    report = {"device": name or device, "dtype": dtype, "hbm_bytes_per_s": bandwidth(name), "tiny": args.tiny}
    report |= {"cpu": cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    report |= {"command": " ".join(sys.argv), "budget_s": args.budget, "models": {}, "algorithms": {}}
    save(report, out)
    for role in ("target", "drafter"):
        seconds = min(args.latency_s, left())
        skip = {"error": f"skipped: {seconds:.0f} s left"}
        report["models"][role] = latency_phase(role, args, seconds, report["hbm_bytes_per_s"]) if seconds > 20 else skip
        save(report, out)
    t, d = report["models"]["target"], report["models"]["drafter"]
    if "eager_ms" in t and "eager_ms" in d:
        report["c_eager"], report["c_compiled"] = d["eager_ms"] / t["eager_ms"], d["compiled_ms"] / t["compiled_ms"]
    folders = model_folders(args.tiny, out)
    for a in args.acceptance:
        report.setdefault("gpu_memory_before_jobs", []).append(gpu_memory_mib())
        seconds = left()
        skip = {"error": f"skipped: {seconds:.0f} s left"}
        report["algorithms"][str(a)] = (
            algorithms_phase(folders, args, device, dtype, a, seconds) if seconds > 30 else skip
        )
        save(report, out)
    report["total_s"] = round(time.monotonic() - started, 1)
    save(report, out)
    return report


def table(r: dict) -> list[str]:
    """The report as the lines of a Markdown-friendly table (printed, and DIR/gpu_check.md)."""
    hbm = f"{r['hbm_bytes_per_s'] / 1e12:.2f} TB/s" if r["hbm_bytes_per_s"] else "unknown"
    lines = [f"device {r['device']} ({r['dtype']}), HBM {hbm}; CPU {r['cpu']}, {r['cores']} cores; {r['date']}", ""]
    lines += ["| model | eager ms/tok | compiled ms/tok | HBM floor ms | compiled / floor | compile s | same tokens |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for role, m in r["models"].items():
        if "error" in m:
            lines.append(f"| {role} | {m['error']} | | | | | |")
            continue
        floor = f"{m['hbm_floor_ms']:.3f}" if m["hbm_floor_ms"] else "n/a"
        ratio = f"{m['compiled_vs_floor']:.2f}x" if m["compiled_vs_floor"] else "n/a"
        same = "yes" if m["tokens_equal"] else f"no, from step {m['first_difference']['step']}"
        lines.append(
            f"| {role} | {m['eager_ms']:.3f} | {m['compiled_ms']:.3f} | {floor} | {ratio} | {m['compile_s']:.1f} | {same} |"
        )
    if "c_eager" in r:
        lines += ["", f"c = drafter/target per token: eager {r['c_eager']:.3f}, compiled {r['c_compiled']:.3f}"]
    for memory in r.get("gpu_memory_before_jobs", []):
        if memory:
            lines.append(f"GPU memory before a job: {memory['used_mib']} of {memory['total_mib']} MiB in use")
    for a, algorithms in r["algorithms"].items():
        lines += ["", f"EMULATED ACCEPTANCE (i.i.d. {a}), real compiled forwards:"]
        if "error" in algorithms:
            lines.append(f"  {algorithms['error']}")
            continue
        shared = algorithms["shared_gpus"]
        lines += ["| algorithm | ms/token | vs nonsi | vs si | acceptance |", "|---|---|---|---|---|"]
        for name in ("nonsi", "si", "dsi"):
            m = algorithms.get(name)
            if m:
                mark = "*" if shared and name != "nonsi" else ""
                accepted = "-" if m["acceptance"] != m["acceptance"] else f"{m['acceptance']:.3f}"  # NaN: nonsi
                lines.append(
                    f"| {name}{mark} | {m['ms_per_token']:.3f} | {m['speedup_vs_nonsi']:.2f} | "
                    f"{m['speedup_vs_si']:.2f} | {accepted} |"
                )
        for group in shared:
            lines.append(f"* FUNCTIONAL CHECK, not a speed: ranks {group['ranks']} shared {group['gpu']}")
    return lines


OPTIONS = (  # flag, type, default, default with --tiny, help
    ("--verifiers", int, 2, 1, "verifier ranks"),
    ("--segments", int, 1, 1, "models.compile_segments of the target (1: one CUDA graph)"),
    ("--lookahead", int, 5, 5, "drafts per block (fixed k: the check times a known shape)"),
    ("--prompts", int, 2, 1, "emulated prompts"),
    ("--prompt-tokens", int, 64, 12, "tokens per prompt"),
    ("--new-tokens", int, 64, 12, "tokens generated per prompt"),
    ("--steps", int, 50, 5, "decode steps per latency measurement"),
    ("--buckets", "ints", [1, 8], [1, 4], "models.compile_buckets of the jobs (the shapes the jobs use)"),
    ("--acceptance", "floats", [0.8, 0.6], [0.8], "EMULATED ACCEPTANCE: one job per value, in this order"),
)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU, little work (a test)")
    add_sized_options(parser, OPTIONS)
    parser.add_argument("--budget", type=float, default=330, help="seconds for everything, phases in order")
    parser.add_argument("--latency-s", type=float, default=150, help="seconds at most for each latency phase")
    parser.add_argument("--out", default=os.environ.get("OUT") or "results/gpu_check", help="folder for the outputs")
    parser.add_argument("--phase", choices=("latency",), help=argparse.SUPPRESS)  # a child's part
    parser.add_argument("--role", choices=("target", "drafter"), help=argparse.SUPPRESS)
    return sized_defaults(parser.parse_args(argv), OPTIONS)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase == "latency":
        return latency_child(args)
    report = run_phases(args)
    publish(report, table(report), Path(args.out, "gpu_check.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
