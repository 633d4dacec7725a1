"""Build a drafter for SmolLM2-135M-Instruct on CPU: SmolLM2's own embedding (frozen, tied head) and first
LAYERS decoder layers, distilled on SmolLM2's own greedy answers to chat-templated requests.

    python inputs/models/train_smollm2_drafter.py [--target DIR] [--dest DIR] [--answers 1024] [--steps 400]
    python inputs/models/train_smollm2_drafter.py --report    # the SmolLM2 section of TRAINING.md

1. Requests (distill_requests.py): hand-written general programming tasks, concepts and how-tos, alternating
   with requests built from the Python stdlib's documented functions, wrapped in the chat template. The
   held-out evaluation requests, those of inputs/prompts/smollm2_chat.jsonl, and their topics are left out.
2. Distillation data (distill_data.py): the target's greedy answers (batched HF generate, left padding) to
   the first requests, --answers of them, with the target's top --soft-top-k log-probabilities at each answer
   position.
3. Drafter: LlamaForCausalLM with the target's config but LAYERS layers, initialised from the target's
   embedding, first layers and final norm; embedding/head frozen; cross entropy on the answer tokens (= the
   target's greedy choices) plus --soft-weight x cross entropy against the target's top-k distribution, for
   --steps steps (AdamW, warm-up, cosine). With --head-tokens N the head keeps only N rows (the target's
   most frequent answer tokens, draft_vocab.json in the folder, dsi_mpi/backends/draft_vocab.py): the head is
   most of a small drafter's cost, so the rows it drops buy layers.
4. Held-out measurement: greedy acceptance (the drafter's argmax on the target's own greedy continuation)
   and c = drafter / target median decode ms/token with a KV cache, 1 thread, interleaved rounds.
The folder (about 230 MB fp32 with 8 layers: not committed) goes to the cache next to the target, with DRAFTER.json
holding every measured number (drafter_report.py writes TRAINING.md from it); a second run finds DRAFTER.json and
does nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads that wait must not spin: the cores are shared
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from decode_timing import decode_step_ms  # noqa: E402
from distill_data import cached_distill_data, chat_ids, generate_batch  # noqa: E402
from distill_requests import training_requests  # noqa: E402
from drafter_report import MARKER, write_report  # noqa: E402
from fetch_smollm2 import build_once, cache_root, default_dest  # noqa: E402

HELDOUT = HERE.parent / "prompts" / "smollm2_chat.jsonl"
SEED = 1234


def make_drafter(target, layers: int):
    import copy

    from transformers import LlamaForCausalLM

    cfg = copy.deepcopy(target.config)
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:layers]
    drafter = LlamaForCausalLM(cfg)
    state = {
        k: v
        for k, v in target.state_dict().items()
        if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers
    }
    drafter.load_state_dict(state, strict=False)
    drafter.tie_weights()
    drafter.generation_config = copy.deepcopy(target.generation_config)
    return drafter


def head_token_ids(data, tok, n: int) -> list[int]:
    """The n tokens a frequency-ranked head keeps (dsi_mpi/backends/draft_vocab.py): the end-of-turn tokens,
    then the target's answer tokens by count, then the rest in id order (byte-level BPE ids follow merge order,
    a frequency order of the tokenizer's own corpus)."""
    from collections import Counter

    counts = Counter(t for d in data for t in d[1])
    ranked = [t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None]
    ranked += [t for t, _ in counts.most_common()] + list(range(len(tok)))
    seen, ids = set(), []
    for t in ranked:
        if t not in seen:
            seen.add(t)
            ids.append(t)
        if len(ids) == n:
            break
    return ids


def with_head(drafter, token_ids):
    """A copy of the drafter with the head a job gives it (the whole vocabulary when token_ids is None)."""
    import copy

    from dsi_mpi.backends.draft_vocab import restrict_head

    if token_ids is None:
        return drafter
    model = copy.deepcopy(drafter)
    restrict_head(model, token_ids)
    return model


def soft_cross_entropy(logits, soft_ids, soft_logp, to_row):
    """-sum p log q over the target's top-k tokens at each position (p renormalised over the top-k rows the
    head has): the target's near-misses as well as its choice."""

    rows = soft_ids if to_row is None else to_row[soft_ids]
    kept = rows >= 0
    p = soft_logp.masked_fill(~kept, -math.inf).softmax(-1)
    logq = logits.log_softmax(-1).gather(1, rows.clamp(min=0))
    return -(p * logq.masked_fill(~kept, 0.0)).sum(-1).mean() if len(p) else logits.sum() * 0.0


def train(drafter, data, steps, lr, batch, max_len, token_ids=None, soft_weight=1.0, log_every=10):
    """Cross entropy on the target's greedy tokens, plus soft_weight x soft_cross_entropy where the data
    has soft labels; `steps` batches, the learning rate's schedule by step: the same drafter whatever the
    machine's load."""
    import torch
    import torch.nn.functional as F

    drafter.train()
    emb = drafter.get_input_embeddings().weight
    emb.requires_grad_(False)
    head, to_row = emb, None  # a restricted head scores only its rows; answer tokens outside them are left out
    if token_ids is not None:
        head = emb[torch.tensor(token_ids)]
        to_row = torch.full((emb.shape[0],), -100, dtype=torch.long)
        to_row[torch.tensor(token_ids)] = torch.arange(len(token_ids))
    params = [p for p in drafter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(SEED)
    seqs = [(d[0] + d[1])[:max_len] for d in data]
    starts = [len(d[0]) for d in data]
    soft = [d[2] if len(d) > 2 else None for d in data]
    use_soft = soft_weight > 0 and all(x is not None for x in soft)
    order, t0, c0, step, warm, losses, hard = [], time.time(), time.process_time(), 0, 20, [], []
    while step < steps:
        if not order:
            order = list(range(len(seqs)))
            rng.shuffle(order)
        idx, order = order[:batch], order[batch:]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        target_mask = torch.zeros(len(idx), width, dtype=torch.bool)
        for r, i in enumerate(idx):
            s = seqs[i]
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
            target_mask[r, starts[i] - 1 : len(s) - 1] = True  # positions that predict an answer token
        frac = step / steps
        scale = min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        hidden = drafter.model(input_ids=ids, attention_mask=mask).last_hidden_state
        labels = ids[:, 1:][target_mask[:, :-1]]
        logits = F.linear(hidden[:, :-1][target_mask[:, :-1]], head)
        loss = F.cross_entropy(logits, labels if to_row is None else to_row[labels], ignore_index=-100)
        hard.append(loss.item())
        n = [max(0, len(seqs[i]) - starts[i]) for i in idx]
        if use_soft and sum(n):  # soft labels of the answer positions, in the row-major order of target_mask
            s_ids = torch.tensor([t for i, k in zip(idx, n) for t in soft[i][0][:k]], dtype=torch.long)
            s_lp = torch.tensor([v for i, k in zip(idx, n) for v in soft[i][1][:k]])
            loss = loss + soft_weight * soft_cross_entropy(logits, s_ids, s_lp, to_row)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % log_every == 0:
            print(
                f"  step {step}: loss {statistics.mean(losses[-log_every:]):.3f}, "
                f"{(time.time() - t0) / step:.2f} s/step, lr {lr * scale:.2e}",
                flush=True,
            )
    drafter.eval()
    return {
        "steps": step,
        "train_s": round(time.time() - t0, 1),
        "train_cpu_s": round(time.process_time() - c0, 1),
        "final_loss": round(statistics.mean(losses[-20:]), 4) if losses else None,
        "final_hard_loss": round(statistics.mean(hard[-20:]), 4) if hard else None,  # the greedy-token part
        "soft_weight": soft_weight if use_soft else 0.0,
    }


def heldout_requests() -> list[str]:
    """The user turns of the held-out chat prompts (HELDOUT, chat template applied): what acceptance is measured on."""
    heldout = [json.loads(line)["prompt"] for line in HELDOUT.read_text().splitlines() if line.strip()]
    return [p.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0] for p in heldout]


def acceptance(target, drafter, tok, requests, new):
    """Per-token greedy acceptance: the drafter's argmax on the target's own greedy continuation."""
    import torch

    prompts = [chat_ids(tok, r) for r in requests]
    answers, _ = generate_batch(target, tok, prompts, new)
    match = total = 0
    runs, per_prompt = [], []
    for p, a in zip(prompts, answers):
        seq = torch.tensor([p + a])
        with torch.no_grad():
            pred = drafter(seq).logits[0, len(p) - 1 : len(p) + len(a) - 1].argmax(-1).tolist()
        hits = [int(x == y) for x, y in zip(pred, a)]
        match += sum(hits)
        total += len(hits)
        per_prompt.append(round(sum(hits) / max(1, len(hits)), 3))
        run = 0
        for h in hits:  # lengths of runs of matching tokens ending at a miss
            if h:
                run += 1
            else:
                runs.append(run)
                run = 0
    return {
        "a": round(match / total, 4),
        "positions": total,
        "per_prompt": per_prompt,
        "mean_run": round(statistics.mean(runs), 3) if runs else None,
        "sample": tok.decode(answers[0]),
    }


def decode_ms(model, n=32):
    """decode_step_ms after a prefill of 64 fixed pseudo-random token ids."""
    import torch

    ids = torch.randint(100, 40000, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    return decode_step_ms(model, ids, n)


def latency_ratio(target, drafter, rounds=5):
    """Median ms/token of each, 1 thread, in alternating rounds (the cores are shared: noise hits both)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t_ms, d_ms = [], []
    for _ in range(rounds):
        t_ms.append(decode_ms(target))
        d_ms.append(decode_ms(drafter))
    torch.set_num_threads(threads)
    tm, dm = statistics.median(t_ms), statistics.median(d_ms)
    return {
        "target_ms": round(tm, 2),
        "drafter_ms": round(dm, 2),
        "c": round(dm / tm, 4),
        "rounds_c": [round(d / t, 3) for d, t in zip(d_ms, t_ms)],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=Path, default=default_dest())
    ap.add_argument("--dest", type=Path, default=cache_root() / "smollm2-drafter")
    ap.add_argument("--link", type=Path, default=None, help="also make this path a symlink to --dest")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--head-tokens", type=int, default=8192, help="rows of a frequency-ranked head (0: all)")
    ap.add_argument(
        "--data", type=Path, default=cache_root() / "smollm2-distill-data.json", help="distillation data, reused"
    )
    ap.add_argument("--answers", type=int, default=1024, help="answers generated for the distillation data")
    ap.add_argument("--steps", type=int, default=400, help="training steps (batches)")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--soft-top-k", type=int, default=10, help="soft labels kept per answer token (0: none)")
    ap.add_argument("--soft-weight", type=float, default=1.0, help="weight of the soft-label loss")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=320)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="only write the SmolLM2 section of TRAINING.md")
    ap.add_argument("--force", action="store_true", help="rebuild even if DRAFTER.json exists")
    args = ap.parse_args(argv)
    dest = args.dest.expanduser().resolve()
    if args.report:
        write_report(dest)
        return 0
    build_once(dest, MARKER, lambda folder: build(args, folder), args.force, args.link)
    return 0


def build(args, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    t_all = time.time()
    target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.target)
    tok.padding_side = "left"
    held_requests = heldout_requests()
    requests = training_requests(args.requests, SEED, held_requests)
    print(f"{len(requests)} training requests; distillation data from the first {args.answers} answers", flush=True)
    data, used, gen_s, gen_cpu_s = cached_distill_data(target, tok, requests, args, args.data)
    drafter = make_drafter(target, args.layers)
    n_params = sum(p.numel() for p in drafter.parameters())
    n_train = sum(p.numel() for n, p in drafter.named_parameters() if "embed_tokens" not in n)
    print(
        f"drafter: {args.layers} layers, {n_params:,} parameters ({n_train:,} trained); training {args.steps} steps",
        flush=True,
    )
    token_ids = head_token_ids(data, tok, args.head_tokens) if 0 < args.head_tokens < len(tok) else None
    before = acceptance(target, with_head(drafter, token_ids), tok, held_requests, args.eval_tokens)["a"]
    tr = train(drafter, data, args.steps, args.lr, args.batch, args.max_len, token_ids, args.soft_weight)
    trained = with_head(drafter, token_ids)  # the drafter a job loads, measured as such
    acc = acceptance(target, trained, tok, held_requests, args.eval_tokens)
    lat = latency_ratio(target, trained)
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    drafter.save_pretrained(tmp)
    tok.padding_side = "right"
    tok.save_pretrained(tmp)
    if token_ids is not None:
        from dsi_mpi.backends.draft_vocab import FILE

        kept = set(token_ids)
        coverage = sum(t in kept for d in data for t in d[1]) / max(1, sum(len(d[1]) for d in data))
        (tmp / FILE).write_text(
            json.dumps({"token_ids": token_ids, "ranked_by": "answer-token counts, then id", "coverage": coverage})
        )
    size = sum(p.stat().st_size for p in tmp.iterdir()) / 1e6
    info = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "distill": {
            "requests_used": min(used, len(requests)),
            "answers": len(data),
            "answer_tokens": sum(len(d[1]) for d in data),
            "gen_s": round(gen_s, 1),
            "gen_cpu_s": round(gen_cpu_s, 1),
        },
        "drafter": {
            "layers": args.layers,
            "head_tokens": len(token_ids) if token_ids else 0,
            "parameters": n_params,
            "trained_parameters": n_train,
            "folder_mb": round(size, 1),
        },
        "training": tr,
        "acceptance_before_training": before,
        "heldout": acc,
        "latency": lat,
        "total_s": round(time.time() - t_all, 1),
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(json.dumps({k: info[k] for k in ("distill", "drafter", "training", "latency")}, indent=1))
    print(f"held-out greedy acceptance a = {acc['a']} (before training {before}), c = {lat['c']}")
    print(f"wrote {dest}")


if __name__ == "__main__":
    sys.exit(main())
