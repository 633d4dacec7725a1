"""Train the project's default target/drafter pair and write the default prompt set.

Usage (from the repository root; about 20 minutes on 2 idle cores, longer on a busy machine):

    .venv/bin/python inputs/models/train_default_pair.py [--target-steps N --drafter-steps M]

No model hub is reachable, so the pair is trained from scratch on a corpus every
machine has: the Python standard library's own .py sources.  The 5.3M-parameter
Llama target learns from the text; the 0.4M-parameter Llama drafter is distilled
from the target (KL to its next-token distribution), which raises greedy
acceptance faster than raw-text training.  Training is bounded by budgets of
process CPU time (the learning-rate schedule follows CPU time, so a busy shared
machine slows a run down rather than shrinking it); the step counts reached are
recorded in TRAINING.md, and --target-steps / --drafter-steps replay a run with
that many steps on a step-based schedule.

Writes inputs/models/{target,drafter}/ (fp32 safetensors, tokenizer, generation
config), inputs/prompts/{default,smoke}.jsonl and inputs/models/TRAINING.md.
"""

import argparse
import ast
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path

# OpenMP threads that spin while waiting cost 3-4x more CPU per step on a busy
# shared machine (measured); passive waiting keeps 2 threads cheap there.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from decode_timing import decode_step_ms  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# ----------------------------------------------------------------------------- config
SEED = 1234
HOLDOUT_FRACTION = 0.05  # share of stdlib files kept out of training
EXCLUDED_DIRS = {"site-packages", "test", "tests", "idlelib"}
VOCAB_SIZE = 2048
MAX_POSITIONS = 1024
EOS = "<|endoftext|>"  # also bos and pad

# seq 256 (not 128) so that a ~130-token prompt plus 64+ generated tokens stays
# inside the context the models were trained on (RoPE does not extrapolate well);
# batch 4 keeps the 1024 tokens per step of the measured seq-128/batch-8 recipe.
SEQ_LEN = 256
BATCH_SIZE = 4
WARMUP_STEPS = 50
MIN_LR_RATIO = 0.1  # cosine decays to lr * MIN_LR_RATIO
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
NUM_THREADS = 2
OTHER_SECTIONS = "<!-- sections below are written by other scripts -->"  # kept when rewriting TRAINING.md
BF16_AUTOCAST = True  # bf16 matmuls in training: half the CPU per step (measured, AVX512-BF16)

TARGET = dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=704)
TARGET_LR = 2e-3
TARGET_CPU_SECONDS = 1000  # ~11 min wall on 2 idle cores

DRAFTER = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
DRAFTER_LR = 4e-3
DRAFTER_CPU_SECONDS = 500  # ~6 min wall on 2 idle cores
WALL_LIMIT_FACTOR = 2.0  # hard stop after this many wall seconds per budgeted CPU second
DISTILL_TEMPERATURE = 1.0  # softening of both distributions in the KL
DISTILL_CE_WEIGHT = 0.0  # optional mix-in of plain cross entropy on the text

EVAL_WINDOWS = 64  # held-out windows of SEQ_LEN tokens for the loss
N_ACCEPT_PROMPTS = 16  # held-out prompts for the acceptance measurement
N_DEFAULT_PROMPTS = 8  # the first 8 of them become inputs/prompts/default.jsonl
N_SMOKE_PROMPTS = 2
PROMPT_CHARS = (300, 500)
GEN_TOKENS = 64
SPEC_K = 5  # draft length for tokens-per-call figures
TIMING_STEPS = 64  # decode steps timed per model (1 thread)

HERE = Path(__file__).resolve().parent
PROMPTS_DIR = HERE.parent / "prompts"


# ----------------------------------------------------------------------------- data
def stdlib_files():
    """Sorted .py files of the running interpreter's stdlib, minus tests and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not EXCLUDED_DIRS & set(p.relative_to(root).parts[:-1]))
    return root, files


def split_files(files):
    """Seeded shuffle of the sorted list; the first ~5% are held out."""
    order = list(files)
    random.Random(SEED).shuffle(order)
    n_held = max(1, round(len(order) * HOLDOUT_FRACTION))
    return sorted(order[n_held:]), sorted(order[:n_held])


def read(path):
    return path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(texts):
    """Byte-level BPE: every byte string is encodable, so any prompt works."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, model_max_length=MAX_POSITIONS
    )


def token_stream(tokenizer, texts):
    """All files concatenated, each preceded by <|endoftext|> as a document separator."""
    encs = tokenizer._tokenizer.encode_batch(texts)
    ids = [i for enc in encs for i in [tokenizer.eos_token_id] + enc.ids]
    return torch.tensor(ids, dtype=torch.long)


def get_batch(data, gen):
    starts = torch.randint(0, len(data) - SEQ_LEN - 1, (BATCH_SIZE,), generator=gen)
    x = torch.stack([data[s : s + SEQ_LEN] for s in starts])
    y = torch.stack([data[s + 1 : s + SEQ_LEN + 1] for s in starts])
    return x, y


# ----------------------------------------------------------------------------- models
def make_model(dims, tokenizer):
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        num_key_value_heads=dims["num_attention_heads"],
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        **dims,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, do_sample=False)
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def lr_at(step, progress, peak):
    """Linear warm-up over the first steps, cosine to peak * MIN_LR_RATIO as progress goes 0 -> 1."""
    cosine = MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * min(1.0, (step + 1) / WARMUP_STEPS) * cosine


def train(name, model, loss_fn, data, peak_lr, cpu_seconds, fixed_steps):
    """AdamW for `cpu_seconds` of this process's CPU time (or exactly `fixed_steps` steps).

    The schedule follows CPU time, not steps or wall time: on a shared machine a
    wall-clock budget shrinks the training whenever others are busy (measured:
    a tenth of the planned steps), while CPU time tracks the work done.  A wall-clock stop at
    WALL_LIMIT_FACTOR x the budget still bounds the run.
    """
    gen = torch.Generator().manual_seed(SEED)
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=peak_lr, betas=BETAS)
    step, t0, c0 = 0, time.perf_counter(), time.process_time()
    progress = lambda: step / fixed_steps if fixed_steps else (time.process_time() - c0) / cpu_seconds  # noqa: E731
    wall_limit = WALL_LIMIT_FACTOR * (cpu_seconds if not fixed_steps else float("inf"))
    model.train()
    while progress() < 1 and time.perf_counter() - t0 < wall_limit:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress(), peak_lr)
        x, y = get_batch(data, gen)
        loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(
                f"[{name}] step {step} loss {loss.item():.3f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{time.perf_counter() - t0:.0f}s wall {time.process_time() - c0:.0f}s cpu",
                flush=True,
            )
    model.eval()
    return {
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "stopped_by_wall_limit": progress() < 1,
    }


def logits_of(model, x):
    """Forward pass; matmuls in bf16 when BF16_AUTOCAST (weights stay fp32), logits in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16_AUTOCAST):
        return model(input_ids=x).logits.float()


def lm_loss(model, x, y):
    logits = logits_of(model, x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def distill_loss_fn(target):
    """KL(target || drafter) on the next-token distributions, optionally plus CE."""

    def loss_fn(drafter, x, y):
        with torch.no_grad():
            t_logits = logits_of(target, x).flatten(0, 1)
        s_logits = logits_of(drafter, x).flatten(0, 1)
        temp = DISTILL_TEMPERATURE
        kl = (
            F.kl_div(
                F.log_softmax(s_logits / temp, -1),
                F.log_softmax(t_logits / temp, -1),
                log_target=True,
                reduction="batchmean",
            )
            * temp**2
        )
        if DISTILL_CE_WEIGHT:
            return kl + DISTILL_CE_WEIGHT * F.cross_entropy(s_logits, y.flatten())
        return kl

    return loss_fn


# ----------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def heldout_loss(model, data):
    """Mean per-token loss on evenly spaced held-out windows, overall and per context half."""
    starts = np.linspace(0, len(data) - SEQ_LEN - 2, EVAL_WINDOWS).astype(int)
    losses = []
    for i in range(0, EVAL_WINDOWS, 8):
        x = torch.stack([data[s : s + SEQ_LEN] for s in starts[i : i + 8]])
        y = torch.stack([data[s + 1 : s + SEQ_LEN + 1] for s in starts[i : i + 8]])
        logits = model(input_ids=x).logits
        losses.append(F.cross_entropy(logits.transpose(1, 2), y, reduction="none"))
    loss = torch.cat(losses)
    half = SEQ_LEN // 2
    return loss.mean().item(), loss[:, :half].mean().item(), loss[:, half:].mean().item()


def find_prompts(root, files):
    """def line + docstring snippets (300-500 chars, ending at the closing quotes).

    One snippet per held-out module where possible, picked by a seeded RNG.
    Short snippets are extended upwards by whole preceding lines.
    """
    rng = random.Random(SEED)
    per_module = []
    for path in files:
        text = read(path)
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = [line.rstrip() for line in text.splitlines()]
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        found = []
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
                continue
            doc = node.body[0]
            if not (
                isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
            ):
                continue
            end_line = lines[doc.end_lineno - 1].encode()[: doc.end_col_offset].decode()
            body = lines[node.lineno - 1 : doc.end_lineno - 1] + [end_line]
            start = node.lineno - 1
            while len("\n".join(body)) < PROMPT_CHARS[0] and start > 0:
                start -= 1
                body = [lines[start]] + body
            while body and not body[0].strip():
                body = body[1:]
            snippet = "\n".join(body)
            if (
                PROMPT_CHARS[0] <= len(snippet) <= PROMPT_CHARS[1]
                and snippet.isascii()
                and "\t" not in snippet
                and snippet.endswith(('"""', "'''"))
            ):
                found.append({"id": f"{module}:{node.lineno}", "prompt": snippet})
        if found:
            per_module.append(sorted(found, key=lambda p: int(p["id"].rsplit(":", 1)[1])))
    rng.shuffle(per_module)
    for found in per_module:
        rng.shuffle(found)
    # one snippet per module first; second snippets only if modules run out
    return ([f[0] for f in per_module] + [f[1] for f in per_module if len(f) > 1])[:N_ACCEPT_PROMPTS]


@torch.inference_mode()
def acceptance(target, drafter, tokenizer, prompts):
    """Greedy target continuations, then the drafter's argmax on the target's own prefixes.

    With greedy verification this is exactly what speculative decoding sees: a
    draft token is accepted iff it equals the target's greedy token.
    """
    matches, samples = [], []
    for p in prompts:
        enc = tokenizer(p["prompt"], return_tensors="pt")
        out = target.generate(**enc, max_new_tokens=GEN_TOKENS, do_sample=False)
        n_prompt = enc.input_ids.shape[1]
        gen = out[0, n_prompt:]
        d_pred = drafter(input_ids=out).logits[0, n_prompt - 1 : -1].argmax(-1)
        matches.append((d_pred == gen).tolist())
        samples.append({"id": p["id"], "prompt_tokens": n_prompt, "continuation": tokenizer.decode(gen)})
    flat = [m for seq in matches for m in seq]
    a = sum(flat) / len(flat)
    runs = [len(r) for seq in matches for r in "".join("1" if m else "0" for m in seq).split("0") if r]
    # replay greedy speculative decoding with k=SPEC_K on the recorded match vectors
    calls = produced = 0
    for seq in matches:
        i = 0
        while i < len(seq):
            n_acc = 0
            while n_acc < SPEC_K and i + n_acc < len(seq) and seq[i + n_acc]:
                n_acc += 1
            calls += 1
            produced += min(n_acc + 1, len(seq) - i)
            i += n_acc + 1
    return {
        "acceptance": a,
        "tokens": len(flat),
        "mean_run": sum(runs) / max(1, len(runs)),
        "iid_tokens_per_call": (1 - a ** (SPEC_K + 1)) / (1 - a) if a < 1 else SPEC_K + 1,
        "replayed_tokens_per_call": produced / calls,
        "samples": samples,
    }


def folder_mb(folder):
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-cpu-seconds", type=float, default=TARGET_CPU_SECONDS)
    ap.add_argument("--drafter-cpu-seconds", type=float, default=DRAFTER_CPU_SECONDS)
    ap.add_argument("--target-steps", type=int, help="replay: exact step count")
    ap.add_argument("--drafter-steps", type=int, help="replay: exact step count")
    args = ap.parse_args()
    torch.set_num_threads(NUM_THREADS)
    t_start = time.perf_counter()
    r = {"args": vars(args)}  # every measured number goes in here and into TRAINING.md

    root, files = stdlib_files()
    train_files, held_files = split_files(files)
    train_texts, held_texts = [read(p) for p in train_files], [read(p) for p in held_files]
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(train_texts)
    r["tokenizer_seconds"] = time.perf_counter() - t0
    train_data, held_data = token_stream(tokenizer, train_texts), token_stream(tokenizer, held_texts)
    r.update(
        n_files=len(files),
        n_held=len(held_files),
        train_tokens=len(train_data),
        held_tokens=len(held_data),
        chars_per_token=sum(map(len, train_texts)) / len(train_data),
    )
    print({k: v for k, v in r.items() if k != "args"}, flush=True)

    target = make_model(TARGET, tokenizer)
    r["target_run"] = train(
        "target", target, lm_loss, train_data, TARGET_LR, args.target_cpu_seconds, args.target_steps
    )
    target.requires_grad_(False)
    drafter = make_model(DRAFTER, tokenizer)
    r["drafter_run"] = train(
        "drafter",
        drafter,
        distill_loss_fn(target),
        train_data,
        DRAFTER_LR,
        args.drafter_cpu_seconds,
        args.drafter_steps,
    )

    folders = {"target": HERE / "target", "drafter": HERE / "drafter"}
    for name, model in (("target", target), ("drafter", drafter)):
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
        # the generic class name also loads under transformers 4.x (5.x writes its own backend name)
        cfg_path = folders[name] / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps({**cfg, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))

    # Everything below measures the saved folders, loaded the way users load them.
    tok = AutoTokenizer.from_pretrained(folders["target"])
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(folders["drafter"]).get_vocab()
    target = AutoModelForCausalLM.from_pretrained(folders["target"]).eval()
    drafter = AutoModelForCausalLM.from_pretrained(folders["drafter"]).eval()
    r.update(
        target_params=n_params(target),
        drafter_params=n_params(drafter),
        target_loss=heldout_loss(target, held_data),
        drafter_loss=heldout_loss(drafter, held_data),
    )

    prompts = find_prompts(root, held_files)
    assert len(prompts) >= N_DEFAULT_PROMPTS, f"only {len(prompts)} prompt candidates"
    PROMPTS_DIR.mkdir(parents=True, exist_ok=True)
    for fname, n in (("default.jsonl", N_DEFAULT_PROMPTS), ("smoke.jsonl", N_SMOKE_PROMPTS)):
        (PROMPTS_DIR / fname).write_text("".join(json.dumps(p) + "\n" for p in prompts[:n]))
    r.update(acceptance(target, drafter, tok, prompts), n_prompts=len(prompts))

    torch.set_num_threads(1)
    prompt_ids = tok(prompts[0]["prompt"])["input_ids"]
    r["ms_target"] = decode_step_ms(target, prompt_ids, TIMING_STEPS)
    r["ms_drafter"] = decode_step_ms(drafter, prompt_ids, TIMING_STEPS)
    r["c"] = r["ms_drafter"] / r["ms_target"]
    r["mb"] = {name: folder_mb(f) for name, f in folders.items()}
    r["total_seconds"] = time.perf_counter() - t_start
    print(json.dumps({k: v for k, v in r.items() if k != "samples"}, indent=1))
    for x in r["samples"][:2]:
        print(f"--- target greedy continuation of {x['id']} ---\n{x['continuation']}\n")
    old = (HERE / "TRAINING.md").read_text() if (HERE / "TRAINING.md").exists() else ""
    kept = old[old.index(OTHER_SECTIONS) :] if OTHER_SECTIONS in old else ""  # e.g. the SmolLM2 drafter's
    (HERE / "TRAINING.md").write_text(report(r, prompts) + ("\n" + kept if kept else ""))
    print(f"inputs/models/ total: {folder_mb(HERE):.2f} MB")


def report(r, prompts):
    """TRAINING.md: the recipe and only numbers measured by this run."""
    t, d, a = r["target_run"], r["drafter_run"], r["acceptance"]
    budget = lambda m: (
        f"{r['args'][m + '_steps']} steps"
        if r["args"][m + "_steps"]  # noqa: E731
        else f"{r['args'][m + '_cpu_seconds']:.0f} cpu"
    )
    dims = lambda c: ", ".join(f"{k} {v}" for k, v in c.items())  # noqa: E731
    losses = {m: " / ".join(f"{v:.3f}" for v in r[f"{m}_loss"]) for m in ("target", "drafter")}
    samples = "\n".join(
        f"Prompt `{x['id']}` ({x['prompt_tokens']} tokens), last lines:\n\n```python\n"
        f"{p['prompt'][-200:]}\n```\n\nTarget's greedy continuation:\n\n```python\n"
        f"{x['continuation']}\n```\n"
        for x, p in zip(r["samples"][:2], prompts)
    )
    return f"""# Default target/drafter pair

Written by `inputs/models/train_default_pair.py` from its own measurements; do not edit by hand.

- Command: `.venv/bin/python {" ".join(sys.argv)}`. Replay with the same step counts:
  `.venv/bin/python {sys.argv[0]} --target-steps {t["steps"]} --drafter-steps {d["steps"]}`.
- Python {platform.python_version()} (its stdlib is the corpus), torch {torch.__version__},
  transformers {transformers.__version__}, tokenizers {tokenizers.__version__}.
- Corpus: stdlib `.py` files ({r["n_files"]}; no site-packages, test, tests or idlelib folders),
  {r["n_held"]} held out by a seeded shuffle (seed {SEED}); {r["train_tokens"]:,} training tokens
  ({r["chars_per_token"]:.2f} characters/token), {r["held_tokens"]:,} held-out tokens.
- Tokenizer: byte-level BPE, vocab {VOCAB_SIZE}, `{EOS}` = bos/eos/pad, precedes every file
  ({r["tokenizer_seconds"]:.1f} s to train); identical files in both model folders.
- Models: LlamaForCausalLM, tied embeddings, max_position_embeddings {MAX_POSITIONS}, fp32. AdamW
  {BETAS}, weight decay {WEIGHT_DECAY} on matrices, clip {GRAD_CLIP}, seq {SEQ_LEN}, batch {BATCH_SIZE},
  {WARMUP_STEPS} warm-up steps, cosine to {MIN_LR_RATIO} x peak lr over the CPU-time budget,
  {NUM_THREADS} threads, OMP_WAIT_POLICY={os.environ["OMP_WAIT_POLICY"]}, bf16 autocast in training: {BF16_AUTOCAST}.
  Target: {dims(TARGET)}, lr {TARGET_LR}, cross entropy.
  Drafter: {dims(DRAFTER)}, lr {DRAFTER_LR},
  KL(target || drafter) at temperature {DISTILL_TEMPERATURE} (+ {DISTILL_CE_WEIGHT} x cross entropy).

| | target | drafter |
|---|---|---|
| parameters | {r["target_params"]:,} | {r["drafter_params"]:,} |
| training budget / CPU time / wall time (s) | {budget("target")} / {t["cpu_seconds"]:.0f} / {t["seconds"]:.0f} | {budget("drafter")} / {d["cpu_seconds"]:.0f} / {d["seconds"]:.0f} |
| stopped by the wall-clock limit ({WALL_LIMIT_FACTOR} x budget) | {t["stopped_by_wall_limit"]} | {d["stopped_by_wall_limit"]} |
| steps reached | {t["steps"]:,} | {d["steps"]:,} |
| held-out loss/token: all / positions < {SEQ_LEN // 2} / >= {SEQ_LEN // 2} | {losses["target"]} | {losses["drafter"]} |
| greedy decode step, KV cache, 1 thread (median ms/token) | {r["ms_target"]:.2f} | {r["ms_drafter"]:.2f} |
| folder size (MB) | {r["mb"]["target"]:.2f} | {r["mb"]["drafter"]:.2f} |

Greedy acceptance: on {r["n_prompts"]} held-out prompts (`def` line + docstring, {PROMPT_CHARS[0]}-{PROMPT_CHARS[1]} characters;
the first {N_DEFAULT_PROMPTS} are `inputs/prompts/default.jsonl`) the target generates {GEN_TOKENS} greedy tokens
({r["tokens"]} positions in all); the drafter's argmax on the target's own prefix is compared.

- per-token acceptance a = {a:.3f}; mean length of runs of matching tokens = {r["mean_run"]:.2f}
- tokens per target call at k={SPEC_K}: i.i.d. (1 - a^{SPEC_K + 1}) / (1 - a) = {r["iid_tokens_per_call"]:.2f};
  replaying greedy speculative decoding on the match sequences = {r["replayed_tokens_per_call"]:.2f}
- cost ratio c = drafter ms / target ms = {r["c"]:.3f}; whole script {r["total_seconds"]:.0f} s

## Sample target text (greedy)

{samples}"""


if __name__ == "__main__":
    main()
