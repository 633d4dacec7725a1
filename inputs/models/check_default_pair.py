"""Check that the default pair loads offline and time one greedy decode step of each model.

Usage (from the repository root): .venv/bin/python inputs/models/check_default_pair.py

Loads inputs/models/{target,drafter} with AutoTokenizer/AutoModelForCausalLM and
HF_HUB_OFFLINE=1 (the way a user loads a local folder), asserts that both
tokenizers have the same vocabulary and special tokens, that the prompt files
parse, and that inputs/models/ stays under 25 MB; then times a greedy decode
step with KV cache on 1 thread, which gives the drafter/target cost ratio c.
"""

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # must be set before transformers is imported

import torch  # noqa: E402
from decode_timing import decode_step_ms  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPTS = HERE.parent / "prompts"
MAX_MB = 25
STEPS = 200  # timed decode steps per model
REPEATS = 3  # timing passes per model; the fastest median is reported


def main():
    torch.set_num_threads(1)
    toks = {n: AutoTokenizer.from_pretrained(HERE / n) for n in ("target", "drafter")}
    models = {n: AutoModelForCausalLM.from_pretrained(HERE / n).eval() for n in ("target", "drafter")}
    assert toks["target"].get_vocab() == toks["drafter"].get_vocab(), "vocabularies differ"
    for n, m in models.items():
        t, g = toks[n], m.generation_config
        assert t.eos_token_id == t.bos_token_id == t.pad_token_id == g.eos_token_id == g.pad_token_id
        params = sum(p.numel() for p in m.parameters())
        print(
            f"{n}: {type(m).__name__} {params:,} params, {m.dtype}, vocab {len(t)}, "
            f"eos/bos/pad id {t.eos_token_id} ({t.eos_token})"
        )

    for name in ("default.jsonl", "smoke.jsonl"):
        rows = [json.loads(line) for line in (PROMPTS / name).read_text().splitlines()]
        assert all(set(r) == {"id", "prompt"} for r in rows)
        print(f"{name}: {len(rows)} prompts, {[r['id'] for r in rows]}")
    mb = sum(f.stat().st_size for f in HERE.rglob("*") if f.is_file()) / 1e6
    print(f"inputs/models/: {mb:.2f} MB")
    assert mb <= MAX_MB

    prompt = json.loads((PROMPTS / "default.jsonl").read_text().splitlines()[0])["prompt"]
    ids = toks["target"](prompt)["input_ids"]
    ms = {n: min(decode_step_ms(m, ids, STEPS) for _ in range(REPEATS)) for n, m in models.items()}
    print(
        f"1 thread, prefill {len(ids)} tokens, median of {STEPS} decode steps: "
        f"target {ms['target']:.2f} ms/token, drafter {ms['drafter']:.2f} ms/token, "
        f"c = {ms['drafter'] / ms['target']:.3f}"
    )


if __name__ == "__main__":
    main()
