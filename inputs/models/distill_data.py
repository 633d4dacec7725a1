"""Distillation data for the SmolLM2 drafter (train_smollm2_drafter.py): the target's own greedy answers to
chat-templated requests, with each answer position's top-k log-probabilities as soft labels, cached as JSON so
that a rebuild with other training settings reuses the same answers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path


def chat_ids(tok, request: str) -> list[int]:
    return list(
        tok.apply_chat_template(
            [{"role": "user", "content": request}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )


def generate_batch(model, tok, prompts: list[list[int]], new: int, top_k: int = 0):
    """Greedy answers for a batch of prompt ids (left padded); each cut after the first eos. With top_k, also
    each answer position's top_k (token ids, log-probabilities) under the target: the soft labels that
    generate computes anyway."""
    import torch

    width = max(map(len, prompts))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new,
            pad_token_id=pad,
            output_logits=bool(top_k),
            return_dict_in_generate=True,
        )
    answers = []
    for row in out.sequences[:, width:].tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id) + 1]
        answers.append(row)
    if not top_k:
        return answers, [None] * len(answers)
    logp = torch.stack(out.logits, 1).float().log_softmax(-1)  # (batch, steps, vocab)
    top = logp.topk(top_k, dim=-1)
    soft = [
        [top.indices[r, : len(a)].tolist(), [[round(x, 3) for x in v] for v in top.values[r, : len(a)].tolist()]]
        for r, a in enumerate(answers)
    ]
    return answers, soft


def distill_data(target, tok, requests, answers, batch, new, top_k):
    """(prompt ids, answer ids, soft labels) for the first `answers` non-empty answers, in request order: a
    count, not a time budget, so that a loaded machine makes the same data, more slowly."""
    data, t0, used = [], time.time(), 0
    c0 = time.process_time()
    for i in range(0, len(requests), batch):
        if len(data) >= answers:
            break
        prompts = [chat_ids(tok, r) for r in requests[i : i + batch]]
        answers_ids, soft = generate_batch(target, tok, prompts, new, top_k)
        for p, a, s in zip(prompts, answers_ids, soft):
            if a:
                data.append((p, a, s))
        used = i + batch
        n = sum(len(d[1]) for d in data)
        print(f"  distill data: {len(data)} answers, {n} tokens, {time.time() - t0:.0f} s", flush=True)
    return data[:answers], used, time.time() - t0, time.process_time() - c0


def cached_distill_data(target, tok, requests, args, path: Path):
    """distill_data, kept in `path` (JSON): a rebuild with other training settings reuses the same answers."""
    key = {k: getattr(args, k) for k in ("answers", "gen_batch", "new_tokens", "requests", "soft_top_k")}
    key["requests_sha1"] = hashlib.sha1("\n".join(requests).encode()).hexdigest()  # new lists, new data
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"distillation data from {path}", flush=True)
            return [tuple(pa) for pa in saved["data"]], saved["used"], saved["gen_s"], saved["gen_cpu_s"]
    out = distill_data(target, tok, requests, args.answers, args.gen_batch, args.new_tokens, args.soft_top_k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps({"key": key, "data": out[0], "used": out[1], "gen_s": out[2], "gen_cpu_s": out[3]}))
    tmp.rename(path)
    return out
