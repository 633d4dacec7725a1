"""Real speculation parallelism on one node's CPU cores: 1 drafter + V verifiers running real forwards at once.

usage: python -m analysis.cpu_parallelism [--tiny] [--out DIR] [--budget 140] [--verifiers 1,2,4,7]
       [--threads 2] [--acceptance 0.7] [--lookahead 5] ...   (analysis/gpu_check.sh runs it after gpu_check.py)

Why: on 2 cores (where dsi-mpi is built) verifiers never really ran at once; a 16-core node holds 1 + 7 ranks of
2 threads each. Each V is one MPI job (models.device "cpu", eager, float32, models.threads = --threads) of nonsi,
si and dsi with EMULATED ACCEPTANCE (i.i.d. --acceptance): every forward is a real forward of a random-weight
model, the target of SmolLM2-135M's shape, the drafter of the project's SmolLM2 drafter's (its first 8 layers and a
frequency-ranked head of 8192 rows, inputs/models/train_smollm2_drafter.py's defaults, modelled as an 8192-token
vocabulary: the same forward). Per V: dsi over si and over nonsi as measured, and as the simulator predicts them
at the inputs the job itself measured (dsi_mpi/reporting/time_model.py: c, T(1) from nonsi, T at the blocks'
length from the verifications, the message cost) with the job's own acceptance draws (model_vs_machine.predict).
DIR/cpu_parallelism.json is written after every job, so a run cut short keeps what it measured; then a table (also
DIR/cpu_parallelism.md) and, as the last line of stdout, the whole report as one JSON object. --tiny: tiny shapes,
V = 1, 2, one thread (a test of this script on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
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
from analysis.model_vs_machine import predict
from dsi_mpi.reporting import metrics as mt
from dsi_mpi.reporting import time_model as tm
from dsi_mpi.timemodel import inputs as ti

# SmolLM2-135M's architecture (its config.json), random weights: no download, no weights file.
SMOLLM2_135M = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
DRAFTER = dict(num_hidden_layers=8, vocab_size=8192)  # train_smollm2_drafter.py's --layers and --head-tokens
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
TINY_LAYERS, TINY_VOCAB = {"target": 6, "drafter": 1}, 1024
SEED = 0
MARGIN_S = 10


def model_folders(tiny: bool, work: Path) -> dict[str, Path]:
    """A config.json per role under `work` (random weights are built from it by each rank)."""
    folders = {}
    for role in ("target", "drafter"):
        config = dict(SMOLLM2_135M, **(DRAFTER if role == "drafter" else {}))
        if tiny:
            config.update(TINY, num_hidden_layers=TINY_LAYERS[role], vocab_size=TINY_VOCAB)
        folders[role] = work / f"{role}_shape"
        folders[role].mkdir(parents=True, exist_ok=True)
        (folders[role] / "config.json").write_text(json.dumps(config, indent=1))
    return folders


def run_job(v: int, args, folders: dict, seconds: float) -> Path | str:
    """One job of nonsi, si and dsi with 1 + v ranks: its results file, or why there is none."""
    out = Path(args.out, f"cpu_parallelism_v{v}.h5")
    settings = {
        "models.kind": '"emulated"',
        "models.target": json.dumps(str(folders["target"])),
        "models.drafter": json.dumps(str(folders["drafter"])),
        "models.device": '"cpu"',
        "models.dtype": '"float32"',
        "models.backend": '"eager"',
        "models.threads": str(args.threads),
        "emulation.forwards": '"model"',
        "emulation.acceptance": str(args.acceptance),
        "emulation.vocab_size": "500",
        "emulation.prompt_tokens": str(args.prompt_tokens),
        "decoding.algorithms": '["nonsi", "si", "dsi"]',
        "decoding.lookahead": str(args.lookahead),
        "decoding.max_new_tokens": str(args.new_tokens),
        "decoding.warmup_prompts": "1",
        "decoding.seed": str(SEED),
        "prompts.limit": str(args.prompts),
        "output.path": json.dumps(str(out)),
        "output.overwrite": "true",
        "runtime.timeout_s": str(round(max(seconds, 60.0))),
    }
    command = job_command(1 + v, ROOT / "inputs/configs/default.toml", settings)
    status = run_bounded(command, job_env(threads=args.threads), seconds)
    if status != 0:
        return f"ran out of its {seconds:.0f} s" if status is None else f"exit status {status}"
    return out


def measure(v: int, path: Path, args) -> dict:
    """Measured ms per token and speedups, the time model's inputs as measured, and the simulator's figures at
    those inputs with this job's draws."""
    from dsi_mpi.io.results import read_results

    meta, records = read_results(str(path))
    figures = mt.compare(records, v)
    row = {"verifiers": v}
    for alg in ("nonsi", "si", "dsi"):
        row[f"measured_{alg}_ms"] = figures[alg]["ms_per_token"]
    row["measured_dsi_vs_si"], row["measured_dsi_vs_nonsi"] = (
        figures["dsi"]["speedup_vs_si"],
        figures["dsi"]["speedup_vs_nonsi"],
    )
    inputs = tm.time_model_inputs(mt.by_algorithm(records))
    if inputs is None:
        return row | {"error": "the time model's inputs are not all in the records"}
    row["inputs"] = inputs
    layers = int(json.loads(meta["drafter"]).get("layers", 1))
    for alg in ("nonsi", "si", "dsi"):
        lat = ti.model_latencies(inputs)[1 if alg == "nonsi" else 0]
        job = (figures[alg]["prompts"], 1, args.acceptance, args.lookahead, v, args.new_tokens)
        seconds = predict(
            alg, lat, inputs["message_s"], *job, seed=SEED, prompt_tokens=args.prompt_tokens, layers=layers
        )
        row[f"predicted_{alg}_ms"] = 1e3 * seconds / args.new_tokens
    for alg in ("si", "dsi"):
        row[f"{alg}_error"] = row[f"measured_{alg}_ms"] / row[f"predicted_{alg}_ms"] - 1
    row["predicted_dsi_vs_si"] = row["predicted_si_ms"] / row["predicted_dsi_ms"]
    row["predicted_dsi_vs_nonsi"] = row["predicted_nonsi_ms"] / row["predicted_dsi_ms"]
    return row


def run_all(args) -> dict:
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folders = model_folders(args.tiny, out)
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    report |= {
        "command": " ".join(sys.argv),
        "threads_per_rank": args.threads,
        "acceptance_emulated_iid": args.acceptance,
    }
    report |= {"lookahead": args.lookahead, "tiny": args.tiny, "budget_s": args.budget, "points": []}
    for v in args.verifiers:
        seconds = started + args.budget - MARGIN_S - time.monotonic()
        result = run_job(v, args, folders, seconds) if seconds > 20 else f"skipped: {seconds:.0f} s left"
        report["points"].append(
            measure(v, result, args) if isinstance(result, Path) else {"verifiers": v, "error": result}
        )
        (out / "cpu_parallelism.json").write_text(json.dumps(report, indent=1, default=float))
    measured = [p["measured_dsi_vs_si"] for p in report["points"] if "measured_dsi_vs_si" in p]
    grows = all(b > a for a, b in zip(measured, measured[1:], strict=False))
    report["dsi_vs_si_grows_with_v"] = grows if len(measured) > 1 else None  # None: fewer than two points
    report["worst_dsi_error"] = max((abs(p["dsi_error"]) for p in report["points"] if "dsi_error" in p), default=None)
    report["total_s"] = round(time.monotonic() - started, 1)
    (out / "cpu_parallelism.json").write_text(json.dumps(report, indent=1, default=float))
    return report


def table(r: dict) -> list[str]:
    lines = [
        f"CPU {r['cpu']}, {r['cores']} cores, {r['threads_per_rank']} threads per rank; EMULATED ACCEPTANCE (i.i.d. "
        f"{r['acceptance_emulated_iid']}), k = {r['lookahead']}, real forwards; {r['date']}",
        "",
        "| V | c | T(1) ms | T(k+1) ms | nonsi ms/tok | si ms/tok | dsi ms/tok | dsi/si measured (predicted) | "
        "dsi/nonsi measured (predicted) | dsi error | si error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["points"]:
        if "predicted_dsi_ms" not in p:
            lines.append(f"| {p['verifiers']} | {p.get('error')} |" + " |" * 9)
            continue
        m = p["inputs"]
        lines.append(
            f"| {p['verifiers']} | {m['c']:.3f} | {1e3 * m['target_tpot_s']:.2f} | {1e3 * m['verify_forward_s']:.2f} | "
            f"{p['measured_nonsi_ms']:.2f} | {p['measured_si_ms']:.2f} | {p['measured_dsi_ms']:.2f} | "
            f"{p['measured_dsi_vs_si']:.2f}x ({p['predicted_dsi_vs_si']:.2f}x) | "
            f"{p['measured_dsi_vs_nonsi']:.2f}x ({p['predicted_dsi_vs_nonsi']:.2f}x) | {p['dsi_error']:+.1%} | "
            f"{p['si_error']:+.1%} |"
        )
    worst = r["worst_dsi_error"]
    lines += ["", f"dsi/si grows with V: {r['dsi_vs_si_grows_with_v']}; worst |dsi error| "]
    lines[-1] += "n/a" if worst is None else f"{worst:.1%} (measured / predicted - 1)"
    return lines


OPTIONS = (  # flag, type, default, default with --tiny, help
    ("--verifiers", "ints", [1, 2, 4, 7], [1, 2], "V: verifier ranks, one job each"),
    ("--threads", int, 2, 1, "torch threads per rank (models.threads)"),
    ("--prompts", int, 2, 1, "timed prompts per job (one more warms up)"),
    ("--prompt-tokens", int, 32, 12, "tokens per emulated prompt"),
    ("--new-tokens", int, 48, 16, "tokens generated per prompt"),
)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, little work (a test on 2 cores)")
    add_sized_options(parser, OPTIONS)
    parser.add_argument("--acceptance", type=float, default=0.7, help="EMULATED ACCEPTANCE, i.i.d.")
    parser.add_argument("--lookahead", type=int, default=5, help="drafts per block (fixed: T(k+1) is one shape)")
    parser.add_argument("--budget", type=float, default=130, help="seconds for all jobs")
    parser.add_argument("--out", default=os.environ.get("OUT") or "results/cpu_parallelism", help="output folder")
    return sized_defaults(parser.parse_args(argv), OPTIONS)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run_all(args)
    publish(report, table(report), Path(args.out, "cpu_parallelism.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
