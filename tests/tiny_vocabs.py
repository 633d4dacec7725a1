"""Tiny models of DIFFERENT vocabularies built at test time (no downloads), for token-level intersection:
- a target over the embedded pair's byte-level BPE (inputs/models/target, 2,048 tokens);
- `bpe`: a byte-level BPE drafter over the first merges of that BPE plus merges of its own, every id moved
  (its model is the target's with embedding and head rows moved to the drafter's ids: where both encode
  a text alike it predicts what the target does, restricted to the shared tokens);
- `sp`: a SentencePiece-style drafter (Llama 2's layout: '▁' for spaces, a dummy prefix space, byte fallback
  tokens '<0x00>'..'<0xFF>') holding the same texts as `bpe`, its model built the same way;
- `disjoint`: a word-level-ish SentencePiece drafter that shares too few tokens (refused);
a drafter over the embedded BPE for tiny_models' byte-level target (`add_bpe_drafter`: it writes a text in
fewer tokens than its target, the direction in which Hugging Face's Universal Assisted Generation works);
and, for the sampling test, 6- and 5-token byte-level vocabularies (`small_pair`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tiny_models import _save

ROOT = Path(__file__).resolve().parent.parent
EOS = "<|endoftext|>"
KEPT_MERGES = 1000  # of the embedded BPE's 1,791
SPACE = "\u2581"


def _fast(tokenizer_object, eos: str = EOS):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, eos_token=eos, bos_token=eos, pad_token=eos)


def _byte_level(vocab: dict, merges: list, eos: str = EOS):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return _fast(tok, eos)


def embedded_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ROOT / "inputs/models/target")


def bpe_drafter_tokenizer():
    """The embedded BPE's bytes and first KEPT_MERGES merges, 24 merges the target lacks, ids shuffled."""
    source = json.loads((ROOT / "inputs/models/target/tokenizer.json").read_text())["model"]
    by_id = sorted(source["vocab"].items(), key=lambda item: item[1])
    alphabet = [t for t, i in by_id[1:257]]
    merges = [tuple(m) for m in source["merges"][:KEPT_MERGES]]
    tokens = alphabet + [a + b for a, b in merges]
    known = set(source["vocab"])
    extra = [(a, b) for a in "qzxj" for b in "qzxjvw" if a + b not in known][:24]
    merges += extra
    tokens += [a + b for a, b in extra]
    random.Random(5).shuffle(tokens)
    return _byte_level({t: i for i, t in enumerate(tokens)} | {EOS: len(tokens)}, merges)


def _byte_char_table() -> dict[str, int]:
    from dsi_mpi.backends.vocab_map import _byte_level_alphabet

    return _byte_level_alphabet()


def sp_drafter_tokenizer():
    """The `bpe` drafter's tokens and merges written SentencePiece's way (those that are whole UTF-8 text),
    with byte fallback, Llama 2's normalizer (dummy prefix, spaces as '▁') and decoder."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers

    table = _byte_char_table()
    bpe = bpe_drafter_tokenizer().backend_tokenizer
    model = json.loads(bpe.to_str())["model"]

    def convert(token: str) -> str | None:
        try:
            return bytes(table[c] for c in token).decode().replace(" ", SPACE)
        except (KeyError, UnicodeDecodeError):
            return None

    pieces = [f"<0x{b:02X}>" for b in range(256)]
    for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]):
        text = convert(token) if token != EOS else None
        if text and text not in pieces:
            pieces.append(text)
    merges = []
    for a, b in model["merges"]:
        pair = convert(a), convert(b)
        if all(pair) and pair[0] + pair[1] in pieces:
            merges.append(pair)
    vocab = {p: i for i, p in enumerate(pieces)} | {EOS: len(pieces)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(Regex(" "), SPACE)])
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return _fast(tok)


def disjoint_tokenizer():
    """SentencePiece-style, 300 four-letter words and a few letters: shares few tokens with a byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models

    rng = random.Random(3)
    words = {SPACE + "".join(rng.choice("bcdfghklmnprstvz") for _ in range(4)) for _ in range(300)}
    pieces = list("aeiou") + sorted(words)
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)} | {EOS: len(pieces)}, merges=[]))
    tok.decoder = decoders.Metaspace()
    return _fast(tok)


def _llama(vocab: int, tokenizer, seed: int):
    from tiny_models import TINY
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **dict(TINY, hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=512),
        vocab_size=vocab,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def moved_copy(target, target_tokenizer, tokenizer, seed: int, noise: float = 0.0):
    """A drafter over `tokenizer`: the target's architecture and weights (plus `noise` x each weight
    matrix's std), each shared token's embedding and head row moved to its drafter id (tokens matched by
    their bytes), random rows for the others."""
    import copy

    from transformers import AutoModelForCausalLM

    from dsi_mpi.backends.vocab_map import build_vocab_map

    pairs = build_vocab_map(target_tokenizer, tokenizer, target.config.vocab_size, len(tokenizer))
    config = copy.deepcopy(target.config)
    config.vocab_size, config.eos_token_id, config.bos_token_id = len(tokenizer), tokenizer.eos_token_id, None
    torch.manual_seed(seed)
    drafter = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            q = target.get_parameter(name)
            if p.shape == q.shape:
                p.copy_(q + noise * q.std() * torch.randn_like(q) if p.ndim > 1 else q)
        rows, source = torch.as_tensor(pairs.drafter_ids), torch.as_tensor(pairs.target_ids)
        for mine, theirs in (
            (drafter.get_input_embeddings(), target.get_input_embeddings()),
            (drafter.get_output_embeddings(), target.get_output_embeddings()),
        ):
            mine.weight[rows] = theirs.weight[source]
    return drafter


def build_cross_vocab_models(root: Path) -> dict[str, str]:
    """Folders: target (the embedded BPE), bpe and sp (drafters of other vocabularies, see above), disjoint
    (too few shared tokens), no_tokenizer (the bpe drafter without its tokenizer files)."""
    target_tok = embedded_tokenizer()
    target = _llama(len(target_tok), target_tok, seed=21)
    paths = {"target": _save(target, target_tok, root / "target")}
    for name, tok in (("bpe", bpe_drafter_tokenizer()), ("sp", sp_drafter_tokenizer())):
        paths[name] = _save(moved_copy(target, target_tok, tok, seed=22), tok, root / name)
    disjoint = disjoint_tokenizer()
    paths["disjoint"] = _save(_llama(len(disjoint), disjoint, seed=23), disjoint, root / "disjoint")
    bare = root / "no_tokenizer"
    _llama(700, target_tok, seed=24).save_pretrained(bare)
    paths["no_tokenizer"] = str(bare)
    return paths


def small_pair():
    """Byte-level tokenizers of 6 and 5 tokens for the sampling test: they share a, b, c and the end token;
    the target's 'ab' and 'bc' are no drafter tokens (re-encoded from text), the drafter's 'ca' no target one."""
    target = _byte_level({"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, EOS: 5}, [("a", "b"), ("b", "c")])
    drafter = _byte_level({"c": 0, "ca": 1, "a": 2, "b": 3, EOS: 4}, [("c", "a")])
    return target, drafter


def add_small_cross_drafter(paths: dict[str, str], root: Path) -> dict[str, str]:
    """Give the small-vocabulary target (tiny_models.build_small_vocab_models) a tokenizer, and add `cross`:
    a drafter of 5 tokens, the target moved to its ids with noise (a decent drafter of another vocabulary)."""
    from transformers import AutoModelForCausalLM

    target_tok, drafter_tok = small_pair()
    target_tok.save_pretrained(paths["target"])
    target = AutoModelForCausalLM.from_pretrained(paths["target"]).eval()
    drafter = moved_copy(target, target_tok, drafter_tok, seed=31, noise=0.3)
    drafter.generation_config.eos_token_id = None
    drafter.save_pretrained(root / "cross")
    drafter_tok.save_pretrained(root / "cross")
    return paths | {"cross": str(root / "cross")}


def add_bpe_drafter(target_folder: str, folder: Path) -> str:
    """A drafter over the embedded BPE for tiny_models' target (a byte tokenizer: every byte and the end
    token shared, the drafter's 1,791 merged tokens not): the target moved to its ids, with a little noise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = AutoModelForCausalLM.from_pretrained(target_folder).eval()
    tokenizer = embedded_tokenizer()
    return _save(
        moved_copy(target, AutoTokenizer.from_pretrained(target_folder), tokenizer, 41, 0.05), tokenizer, folder
    )
