"""Tiny real Hugging Face models built at test time (no downloads): a byte-level tokenizer, a Llama
target and drafters of every kind the lossless tests need."""

from __future__ import annotations

import json
from pathlib import Path

import torch

EOS = "<|endoftext|>"


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)


# The size every tiny model starts from (tests/tiny_families.py too); each builder overrides what it needs.
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
TINY = dict(SIZES, intermediate_size=64, initializer_range=0.2, tie_word_embeddings=False)


def perturb(copy, model, noise: float):
    """`copy` (same architecture) becomes `model` with Gaussian noise of `noise` x each weight matrix's std
    (vectors copied unchanged): a drafter that agrees with `model` on some tokens."""
    with torch.no_grad():
        for p, q in zip(copy.parameters(), model.parameters()):
            p.copy_(q + noise * q.std() * torch.randn_like(q) if p.ndim > 1 else q)
    return copy


def _gpt2(vocab: int, tokenizer):
    """A random one-layer GPT-2 over `vocab` ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    ids = dict(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=2, n_positions=512, **ids)).eval()


def _save(model, tokenizer, folder: Path) -> str:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _with_head(folder: str, token_ids) -> str:
    """Give a drafter folder a frequency-ranked head of `token_ids` (dsi_mpi/backends/draft_vocab.py)."""
    from dsi_mpi.backends.draft_vocab import FILE

    (Path(folder) / FILE).write_text(json.dumps({"token_ids": list(token_ids)}))
    return folder


def build_tiny_models(root: Path, vocab_extra: int = 0) -> dict[str, str]:
    """Folders: target (Llama), copy (the target itself: every draft right), noisy (a perturbed copy:
    some drafts right), noisy_head (the same drafter with a head of the even token ids only: it cannot
    propose an odd one), gpt2 (random GPT-2: another architecture, drafts nearly always wrong),
    other_vocab (the target's tokenizer, 7 model rows more: drafted through token-level intersection)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(1234)
    llama = LlamaConfig(
        **dict(TINY, hidden_size=64, intermediate_size=128, num_hidden_layers=3, max_position_embeddings=512),
        vocab_size=vocab,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    target = LlamaForCausalLM(llama).eval()
    paths = {"target": _save(target, tokenizer, root / "target")}
    paths["copy"] = _save(target, tokenizer, root / "copy")
    noisy = perturb(LlamaForCausalLM(llama).eval(), target, 0.08)
    paths["noisy"] = _save(noisy, tokenizer, root / "noisy")
    paths["noisy_head"] = _with_head(_save(noisy, tokenizer, root / "noisy_head"), range(0, vocab, 2))
    paths["gpt2"] = _save(_gpt2(vocab, tokenizer), tokenizer, root / "gpt2")
    paths["other_vocab"] = _save(_gpt2(vocab + 7, tokenizer), tokenizer, root / "other_vocab")
    return paths


def build_small_vocab_models(root: Path, vocab: int = 6) -> dict[str, str]:
    """A Llama target over `vocab` token ids (no tokenizer needed), a perturbed copy (a decent drafter) and
    an unrelated random model (a badly wrong drafter), for the statistical tests of sampling."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **dict(TINY, num_attention_heads=2, max_position_embeddings=64),
        vocab_size=vocab,
        num_key_value_heads=2,
        eos_token_id=None,
        bos_token_id=None,
    )
    torch.manual_seed(99)
    paths = {}
    target = LlamaForCausalLM(config).eval()
    noisy = perturb(LlamaForCausalLM(config).eval(), target, 0.3)
    bad = LlamaForCausalLM(config).eval()
    for name, model in (("target", target), ("noisy", noisy), ("noisy_head", noisy), ("bad", bad)):
        model.generation_config.eos_token_id = None
        model.save_pretrained(root / name)
        paths[name] = str(root / name)
    _with_head(paths["noisy_head"], [0, 2, 3, 5])  # q = 0 at tokens 1 and 4, which the target samples
    return paths
