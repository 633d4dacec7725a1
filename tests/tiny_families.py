"""One tiny random target and drafter per common decoder architecture (no downloads), all over the
byte-level vocabulary of `tiny_models.byte_tokenizer`, for the lossless test of every family.

Per family: `target`, and `noisy`, a perturbed copy of it (a decent drafter: some drafts right). The test
takes the next family's target as the bad drafter (another architecture: drafts nearly always wrong).
Families with sliding windows get a window of `WINDOW` positions, much shorter than prompt + generated
text, so the window really moves; Gemma 2 keeps its default soft-capping and alternating local/global
layers, Gemma 3 its default pattern of 5 local layers to 1 global one (so it gets 6 layers).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_models import SIZES, TINY, _save, byte_tokenizer, perturb

WINDOW = 6


def _configs(vocab: int, eos: int) -> dict:
    """family -> (model class name, config class name, config kwargs)."""
    ids = dict(vocab_size=vocab, eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
    gqa = dict(TINY, num_key_value_heads=2, **ids)
    return {
        "llama": ("LlamaForCausalLM", "LlamaConfig", gqa),
        "mistral": ("MistralForCausalLM", "MistralConfig", dict(gqa, sliding_window=WINDOW)),
        # use_sliding_window: layers from max_window_layers on are local, the ones below global
        "qwen2": (
            "Qwen2ForCausalLM",
            "Qwen2Config",
            dict(gqa, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
        ),
        "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(gqa, head_dim=8)),
        "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(gqa, sliding_window=WINDOW)),
        "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(gqa, head_dim=8, sliding_window=WINDOW)),
        "gemma3": (
            "Gemma3ForCausalLM",
            "Gemma3TextConfig",
            dict(gqa, head_dim=8, sliding_window=WINDOW, num_hidden_layers=6),
        ),
        "gpt_bigcode": (
            "GPTBigCodeForCausalLM",
            "GPTBigCodeConfig",
            dict(n_embd=32, n_layer=2, n_head=4, n_positions=256, multi_query=True, initializer_range=0.2, **ids),
        ),
        "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(TINY, **ids)),
        "opt": (
            "OPTForCausalLM",
            "OPTConfig",
            dict(SIZES, ffn_dim=64, word_embed_proj_dim=32, init_std=0.2, **ids),
        ),
        "falcon": (
            "FalconForCausalLM",
            "FalconConfig",
            dict(SIZES, initializer_range=0.2, **ids),
        ),
        "gpt2": (
            "GPT2LMHeadModel",
            "GPT2Config",
            dict(n_embd=32, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2, **ids),
        ),
    }


FAMILIES = tuple(_configs(1, 0))
# weight noise of each family's drafter, chosen so that about half its greedy tokens match the target's
NOISE = {
    "llama": 0.06,
    "mistral": 0.08,
    "qwen2": 0.06,
    "qwen3": 0.08,
    "phi3": 0.05,
    "gemma2": 0.15,
    "gemma3": 0.12,
    "gpt_bigcode": 0.4,
    "gpt_neox": 0.1,
    "opt": 0.12,
    "falcon": 0.1,
    "gpt2": 0.12,
}


def family_config(family: str, vocab: int, eos: int = 0):
    """(model class, config) of one family's tiny model over `vocab` ids."""
    import transformers

    model_cls, config_cls, kwargs = _configs(vocab, eos)[family]
    return getattr(transformers, model_cls), getattr(transformers, config_cls)(**kwargs)


def build_family(family: str, seed: int = 0, noise: float | None = None):
    """(target, noisy drafter) of one family, built in memory."""
    tokenizer = byte_tokenizer()
    model_cls, config = family_config(family, len(tokenizer), tokenizer.eos_token_id)
    torch.manual_seed(seed)
    target = model_cls(config).eval()
    noisy = perturb(model_cls(config).eval(), target, NOISE[family] if noise is None else noise)
    return target, noisy


def build_families(root: Path, families=FAMILIES) -> dict[str, dict[str, str]]:
    """Folders {family: {"target": ..., "noisy": ...}} under `root`."""
    tokenizer = byte_tokenizer()
    paths = {}
    for i, family in enumerate(families):
        target, noisy = build_family(family, seed=100 + i)
        paths[family] = {
            name: _save(model, tokenizer, root / family / name)
            for name, model in (("target", target), ("noisy", noisy))
        }
    return paths
