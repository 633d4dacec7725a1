"""Tiny real Hugging Face models built at test time (no downloads): a byte-level tokenizer, a Llama
target and drafters of every kind the lossless tests need."""

from __future__ import annotations

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


def _save(model, tokenizer, folder: Path) -> str:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def build_tiny_models(root: Path, vocab_extra: int = 0) -> dict[str, str]:
    """Folders: target (Llama), copy (the target itself: every draft right), noisy (a perturbed copy:
    some drafts right), gpt2 (random GPT-2: another architecture, drafts nearly always wrong),
    other_vocab (a drafter whose vocabulary differs)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(1234)
    llama = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    target = LlamaForCausalLM(llama).eval()
    paths = {"target": _save(target, tokenizer, root / "target")}
    paths["copy"] = _save(target, tokenizer, root / "copy")
    noisy = LlamaForCausalLM(llama).eval()
    with torch.no_grad():
        for p, q in zip(noisy.parameters(), target.parameters()):
            p.copy_(q + 0.08 * q.std() * torch.randn_like(q) if p.ndim > 1 else q)
    paths["noisy"] = _save(noisy, tokenizer, root / "noisy")
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=512,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
    )
    paths["gpt2"] = _save(gpt2.eval(), tokenizer, root / "gpt2")
    other = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab + 7,
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=512,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
    )
    paths["other_vocab"] = _save(other.eval(), tokenizer, root / "other_vocab")
    return paths


def build_small_vocab_models(root: Path, vocab: int = 6) -> dict[str, str]:
    """A Llama target over `vocab` token ids (no tokenizer needed), a perturbed copy (a decent drafter) and
    an unrelated random model (a badly wrong drafter), for the statistical tests of sampling."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
        tie_word_embeddings=False,
        eos_token_id=None,
        bos_token_id=None,
    )
    torch.manual_seed(99)
    paths = {}
    target = LlamaForCausalLM(config).eval()
    noisy = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p, q in zip(noisy.parameters(), target.parameters()):
            p.copy_(q + 0.3 * q.std() * torch.randn_like(q) if p.ndim > 1 else q)
    bad = LlamaForCausalLM(config).eval()
    for name, model in (("target", target), ("noisy", noisy), ("bad", bad)):
        model.generation_config.eos_token_id = None
        model.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths
