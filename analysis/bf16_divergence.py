"""Lossless in bf16, measured on a real model: where the packed backend's bf16 greedy decoding and Hugging Face's
own bf16 `generate` part, and whether each parting is a near-tie (docs/lossless.md, "Lossless in bf16").

usage: python -m analysis.bf16_divergence [--model inputs/models/smollm2-135m-instruct]
                                          [--prompts inputs/prompts/smollm2_chat.jsonl] [--limit 12]
                                          [--tokens 48] [--json F]

Per prompt (tokenized as a job does): plain greedy decoding on the packed backend in bf16, which is what nonsi,
si and dsi write on it (its kernels are batch invariant: tests/mpi/test_bf16.py), against `generate` of the same
model loaded by Hugging Face in bf16 (eager), and against the fp32 model's own greedy decoding. At the first
differing position `near_ties.first_divergence` gives the fp32 model's logit margin between the two tokens;
every divergence is listed. One process, one thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def packed_greedy(runner, prompt: list[int], tokens: int) -> list[int]:
    """Plain greedy decoding on the packed backend (what the job's nonsi does), from an empty cache."""
    runner.reset()
    out = [int(runner.greedy(prompt, 1)[-1])]
    while len(out) < tokens:
        out.append(int(runner.greedy([out[-1]], 1)[-1]))
    return out


def hf_greedy(model, prompt: list[int], tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
    return [int(t) for t in out[0, len(prompt) :]]


def compare(fp32, prompt: list[int], ours: list[int], theirs: list[int]) -> dict | None:
    from dsi_mpi.backends.near_ties import first_divergence

    d = first_divergence(fp32, prompt, ours, theirs)
    return None if d is None else dict(position=d.position, ours=d.ours, theirs=d.theirs, margin=round(d.margin, 4))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="inputs/models/smollm2-135m-instruct")
    parser.add_argument("--prompts", default="inputs/prompts/smollm2_chat.jsonl")
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--json", help="also write the record here")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsi_mpi.backends.cpu import cpu_facts
    from dsi_mpi.backends.near_ties import NEAR_TIE
    from dsi_mpi.backends.packed import PackedRunner
    from dsi_mpi.io.prompts import load_prompts

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    fp32 = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).eval()
    prompts = {p.id: [int(t) for t in tokenizer(p.text)["input_ids"]] for p in load_prompts(args.prompts, args.limit)}
    runner = PackedRunner(bf16, (), capacity=max(map(len, prompts.values())) + args.tokens + 1)  # packed once
    rows = []
    for prompt_id, prompt in prompts.items():
        packed = packed_greedy(runner, prompt, args.tokens)
        hf, ref = hf_greedy(bf16, prompt, args.tokens), hf_greedy(fp32, prompt, args.tokens)
        rows.append(
            dict(
                prompt=prompt_id,
                vs_hf_bf16=compare(fp32, prompt, packed, hf),
                vs_fp32=compare(fp32, prompt, packed, ref),
            )
        )
    for name in ("vs_hf_bf16", "vs_fp32"):
        parted = [r[name] for r in rows if r[name] is not None]
        ties = sum(d["margin"] <= NEAR_TIE for d in parted)
        margins = ", ".join(f"{d['margin']:.3f}@{d['position']}" for d in parted)
        print(f"packed bf16 {name}: {len(rows) - len(parted)} of {len(rows)} equal; {len(parted)} part, "
              f"{ties} of them near-ties (fp32 margin <= {NEAR_TIE}){': ' + margins if margins else ''}")  # fmt: skip
    record = dict(model=args.model, tokens=args.tokens, near_tie=NEAR_TIE, cpu=cpu_facts(), rows=rows)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
