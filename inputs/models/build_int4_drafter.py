"""Build SmolLM2-135M-Instruct's calibrated int4 self-drafter: the target's own weights in int4 (a scale per row and
32 inputs, dsi_mpi/backends/quantize.py), each row's rounding errors compensated on the target's own answers
(dsi_mpi/backends/calibrate.py). No training: a closer copy in the same bytes as plain int4 rounding.

    python inputs/models/build_int4_drafter.py [--target DIR] [--dest DIR] [--answers 256] [--link PATH]

1. Calibration text: the target's greedy answers to the first --answers training requests (distill_requests.py,
   the held-out prompts' topics left out; distill_data.py, batched HF generate), each with its prompt.
2. Calibration: every product of the decoder layers and the head rounded by calibrate_int4, E[x x^T] of each
   product's inputs taken from the unrounded target over that text.
3. Held-out measurement, as for the distilled drafter (train_smollm2_drafter.py's `acceptance`): greedy acceptance
   on the held-out chat prompts, of plain int4 rounding and of the calibrated weights; and c, T(1) of the packed
   int4 drafter over the packed bf16 target's, one thread, in alternating rounds (analysis/forward_cost.py).
The folder (fp32 weights on the int4 levels, head untied from the embeddings: about 650 MB, not committed; a job
runs it with `models.drafter_dtype = "int4"`, which finds the same levels) goes to the cache next to the target,
with CALIBRATION.json holding every measured number; a second run finds it and does nothing. The answers are a
count and the rest is deterministic, so a loaded machine builds the same drafter, more slowly.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads that wait must not spin: the cores are shared
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))  # the repository root: analysis/forward_cost.py times c
from distill_data import distill_data  # noqa: E402
from distill_requests import training_requests  # noqa: E402
from fetch_smollm2 import build_once, cache_root, default_dest  # noqa: E402
from train_smollm2_drafter import SEED, acceptance, heldout_requests  # noqa: E402

MARKER = "CALIBRATION.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=Path, default=default_dest())
    ap.add_argument("--dest", type=Path, default=cache_root() / "smollm2-int4")
    ap.add_argument("--link", type=Path, default=None, help="also make this path a symlink to --dest")
    ap.add_argument("--answers", type=int, default=256, help="the target's answers used as calibration text")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="rebuild even if CALIBRATION.json exists")
    args = ap.parse_args(argv)
    dest = args.dest.expanduser().resolve()
    build_once(dest, MARKER, lambda folder: build(args, folder), args.force, args.link)
    return 0


def calibration_text(target, tok, args) -> tuple[list[list[int]], dict]:
    """Prompt + answer ids of the target's first --answers answers to the training requests, and how they came."""
    requests = training_requests(args.requests, SEED, heldout_requests())
    start = time.time()
    data, _, _, _ = distill_data(target, tok, requests, args.answers, args.gen_batch, args.new_tokens, top_k=0)
    sequences = [prompt + answer for prompt, answer, _ in data]
    info = {"answers": len(data), "tokens": sum(map(len, sequences)), "gen_s": round(time.time() - start, 1)}
    return sequences, info


def latency(target_dir: Path, drafter_dir: Path, rounds: int = 8) -> dict:
    """c: median T(1) of the packed int4 drafter over the packed bf16 target's, one thread, alternating rounds."""
    import torch

    from analysis.forward_cost import build as build_variant
    from analysis.forward_cost import time_variants

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runners = {
        "target": build_variant(str(target_dir), "packed:bfloat16", 64),
        "drafter": build_variant(str(drafter_dir), "packed:int4", 64),
    }
    median = time_variants(runners, context=40, tokens=[1], rounds=rounds)
    torch.set_num_threads(threads)
    t_ms, d_ms = median[("target", 1)] * 1e3, median[("drafter", 1)] * 1e3
    return {"target_ms": round(t_ms, 2), "drafter_ms": round(d_ms, 2), "c": round(d_ms / t_ms, 4)}


def build(args, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsi_mpi.backends.calibrate import calibrate_int4
    from dsi_mpi.backends.quantize import INT4, fake_quantize

    torch.set_num_threads(args.threads)
    t_all = time.time()
    target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.target)
    tok.padding_side = "left"
    sequences, text = calibration_text(target, tok, args)
    print(f"calibration text: {text['answers']} answers, {text['tokens']} tokens, {text['gen_s']} s", flush=True)
    held = heldout_requests()
    plain = copy.deepcopy(target)  # the target's weights again, without reading them from disk again
    fake_quantize(plain, INT4)
    plain_a = acceptance(target, plain, tok, held, args.eval_tokens)["a"]
    del plain
    drafter = copy.deepcopy(target)
    start = time.time()
    calibrate_int4(drafter, sequences)
    calibrate_s = time.time() - start
    acc = acceptance(target, drafter, tok, held, args.eval_tokens)
    print(f"held-out greedy acceptance: plain int4 {plain_a}, calibrated {acc['a']} ({calibrate_s:.0f} s)", flush=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    drafter.save_pretrained(tmp)
    tok.padding_side = "right"
    tok.save_pretrained(tmp)
    info = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "calibration_text": text,
        "calibrate_s": round(calibrate_s, 1),
        "heldout_plain_int4": plain_a,
        "heldout": acc,
        "latency": latency(args.target, tmp),
        "folder_mb": round(sum(p.stat().st_size for p in tmp.iterdir()) / 1e6, 1),
        "total_s": round(time.time() - t_all, 1),
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"held-out greedy acceptance a = {acc['a']} (plain int4 {plain_a}), c = {info['latency']['c']}")
    print(f"wrote {dest} in {info['total_s']} s")


if __name__ == "__main__":
    sys.exit(main())
