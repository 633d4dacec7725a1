"""Which tokens a drafter and a target of different vocabularies share: token-level intersection (TLI,
Timor et al., ICML 2025, arXiv 2502.05202).

Tokens are compared by the text they stand for, as bytes, never by their written form: byte-level BPE
writes " the" as 'Ġthe' and SentencePiece as '▁the', and both stand for the bytes b" the".
- byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2; a ByteLevel decoder): every character of a token is one
  byte (the printable Latin-1 bytes as themselves, the others as chr(256 + n), `_byte_level_alphabet`);
- SentencePiece style (Llama 2, Mistral, Gemma; a Metaspace decoder, or one that replaces '▁' by a space):
  '▁' is a space, the rest is UTF-8, and with byte fallback '<0xAB>' is the byte 0xAB;
- special tokens ('<|endoftext|>', '<s>', ...) match only a special token written the same way, never
  ordinary text; other added tokens stand for their own text.
Tokenizers of other kinds (WordPiece, ...) are refused, and so is one whose tokens do not spell what its own
decoder prints (checked on a sample of its tokens) or whose encoding changes the text (a lowercasing
normalizer): no usable tokenizer, one line naming why. Where one vocabulary holds two ids for the same bytes
(SentencePiece's 'A' and '<0x41>'), the ordinary token is the one matched.

A pair is accepted when the shared tokens are at least MIN_SHARED of the smaller vocabulary: TLI drafts only
shared tokens, and a drafter that cannot write most of its own tokens is a poor one (the embedded drafter and
SmolLM2 share 1,793 of the drafter's 2,048).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

import numpy as np

from dsi_mpi.io.config import ConfigError

MIN_SHARED = 0.5  # shared tokens / the smaller vocabulary's tokens, at least
RECORDED_PAIRS = 3000  # the mapping goes into the results file's `drafter` attribute up to this many pairs
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SAMPLE = 512  # tokens whose spelling is checked against the tokenizer's own decoder


def _byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of byte-level BPE: printable Latin-1 bytes stand for themselves, every other byte
    is written as chr(256 + n), n counting those other bytes in order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(others)})
    return {c: b for b, c in chars.items()}


# str.translate table: a byte-level character -> the Latin-1 character of its byte; any other character of
# code < 256 -> U+FFFF, so that encoding the result as Latin-1 fails for a token that is no byte-level text
_TO_LATIN1 = {code: 0xFFFF for code in range(256)} | {ord(c): b for c, b in _byte_level_alphabet().items()}


def _token_bytes(token: str, scheme: str, space: str, byte_fallback: bool) -> bytes | None:
    """The bytes a vocabulary entry stands for; None where it is not written in its tokenizer's scheme."""
    if scheme == "byte-level":
        try:
            return token.translate(_TO_LATIN1).encode("latin-1")
        except UnicodeEncodeError:
            return None
    if byte_fallback and _BYTE_TOKEN.fullmatch(token):
        return bytes([int(token[3:5], 16)])
    return token.replace(space, " ").encode()


@dataclass
class Vocabulary:
    """One tokenizer's tokens as the text each stands for."""

    what: str  # which tokenizer, for messages ("the drafter's tokenizer (2048 rows)")
    tokenizer: object
    scheme: str  # "byte-level" or "sentencepiece"
    spelled: list[bytes]  # per id: the bytes it stands for (a special token: its own text)
    special: list[bool]
    keys: dict = field(default_factory=dict)  # comparison key -> id: bytes, or ("special", text)
    lead: bytes = b""  # what its encoder puts before a text (SentencePiece's dummy prefix: b" ")
    prefix: list[int] = field(default_factory=list)  # ids it adds before a text (a BOS token)

    def spell(self, ids) -> bytes:
        return b"".join(self.spelled[i] for i in ids)

    def encode(self, data: bytes) -> list[int]:
        """Ids for these bytes, no BOS: the tokenizer for valid UTF-8, single-byte tokens for bytes that are
        not (a character cut between two tokens); U+FFFD's ids where the vocabulary has no such token."""
        backend = self.tokenizer.backend_tokenizer
        text = data.decode("utf-8", errors="surrogateescape")
        ids: list[int] = []
        for run in re.split("([\udc80-\udcff]+)", text):
            if run and "\udc80" <= run[0] <= "\udcff":
                for char in run:
                    byte = bytes([ord(char) - 0xDC00])
                    ids += (
                        [self.keys[byte]]
                        if byte in self.keys
                        else backend.encode("\ufffd", add_special_tokens=False).ids
                    )
            elif run:
                ids += backend.encode(run, add_special_tokens=False).ids
        return ids


def _decoder_scheme(tokenizer, what: str) -> tuple[str, str, bool]:
    """(scheme, SentencePiece's space character, byte fallback) from the tokenizer's decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"{what} ({type(tokenizer).__name__}) has no fast (tokenizers) backend to read its tokens from"
        )
    decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else {}
    parts = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    types = [p.get("type") for p in parts]
    if "ByteLevel" in types:
        return "byte-level", "", False
    for p in parts:
        if p.get("type") == "Metaspace" or (p.get("type") == "Replace" and p.get("content") == " "):
            space = p.get("replacement") or p.get("pattern", {}).get("String", "")
            if len(space) == 1:
                return "sentencepiece", space, "ByteFallback" in types
    raise ConfigError(
        f"{what}: its decoder ({', '.join(map(str, types)) or 'none'}) does not say which bytes each "
        "token stands for (byte-level BPE and SentencePiece-style tokenizers can be compared)"
    )


def read_vocabulary(tokenizer, rows: int, what: str) -> Vocabulary:
    """The tokens of `tokenizer` that a model of `rows` vocabulary rows can use, as the text each stands for."""
    scheme, space, byte_fallback = _decoder_scheme(tokenizer, what)
    vocab = tokenizer.get_vocab()
    size = max(rows, max(vocab.values(), default=-1) + 1)
    spelled, special, readable = [b""] * size, [False] * size, [False] * size
    for token, i in vocab.items():
        data = _token_bytes(token, scheme, space, byte_fallback)
        spelled[i], readable[i] = data or b"", data is not None
    for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        spelled[i], special[i], readable[i] = added.content.encode(), bool(added.special), True
    out = Vocabulary(what, tokenizer, scheme, spelled, special)
    fallbacks = {i for t, i in vocab.items() if byte_fallback and _BYTE_TOKEN.fullmatch(t)}
    for i in sorted(range(min(rows, size)), key=lambda i: (i in fallbacks, i)):  # ordinary tokens first
        if readable[i] and spelled[i]:
            out.keys.setdefault(("special", spelled[i].decode()) if special[i] else spelled[i], i)
    _check_spelling(out, _sample(out))
    return out


def _sample(vocab: Vocabulary) -> list[int]:
    """About _SAMPLE ordinary tokens, spread over the ids, that spell whole characters."""
    ids = sorted(i for k, i in vocab.keys.items() if isinstance(k, bytes))
    return [i for i in ids[:: max(1, len(ids) // _SAMPLE)] if _valid_utf8(vocab.spelled[i])]


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _check_spelling(vocab: Vocabulary, sample: list[int]) -> None:
    """Our reading of each token must be what the tokenizer's own decoder prints (a decoder that strips the
    leading space of a text, as SentencePiece's does, is allowed to)."""
    for start in range(0, len(sample), 8):
        ids = sample[start : start + 8]
        ours = vocab.spell(ids).decode()
        theirs = vocab.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if theirs != ours and not (ours.startswith(" ") and theirs == ours[1:]):
            raise ConfigError(
                f"{vocab.what}: its tokens {ids} decode to {theirs!r}, not to the text they stand for "
                f"({ours!r}): its tokens cannot be compared with another vocabulary's"
            )


def measure_encoder(vocab: Vocabulary, strict: bool) -> None:
    """The text its encoder puts before a text that starts with a letter (lead: SentencePiece's dummy prefix
    space) and the ids before it (prefix: a BOS token). strict: the encoder will be given text (a drafter is
    shown the committed text re-encoded), so encoding a text must spell that text, after the lead."""
    tokenizer = vocab.tokenizer
    pieces = [vocab.spell([i]).decode() for i in _sample(vocab)[:64]]
    text = "".join(sorted(pieces, key=lambda p: not p[:1].isalpha())) or "a"  # starts with a letter if it can
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    spelled, wanted = vocab.spell(ids), text.encode()
    lead = spelled[: len(spelled) - len(wanted)]
    if not spelled.endswith(wanted) or lead not in (b"", b" "):
        if strict:
            raise ConfigError(
                f"{vocab.what}: encoding a text does not give that text back ({text[:40]!r} became "
                f"{spelled.decode(errors='replace')[:40]!r}): it cannot be shown the target's text"
            )
        lead = b""
    vocab.lead = lead
    with_special = tokenizer(text)["input_ids"]
    starts = [i for i in range(len(with_special) - len(ids) + 1) if with_special[i : i + len(ids)] == ids]
    vocab.prefix = list(with_special[: starts[0]]) if starts else []


@dataclass
class VocabMap:
    """The shared tokens, as pairs of ids, and what the drafter is shown of each target token."""

    target: Vocabulary
    drafter: Vocabulary
    target_rows: int  # the target model's vocabulary rows (ids the drafter's output is spread over)
    drafter_rows: int  # the drafter model's
    drafter_ids: np.ndarray  # the shared tokens as drafter ids (ascending) ...
    target_ids: np.ndarray  # ... and as target ids
    to_drafter: list[int]  # per target id: its drafter id, -1 where not shared
    text: list[bytes]  # per target id: the bytes the drafter is shown (a special token it lacks: none)
    proposable: int  # shared tokens the drafter's head scores (all, unless draft_vocab.json keeps fewer)

    def record(self) -> dict:
        """For the results file's `drafter` attribute."""
        pairs = np.stack([self.drafter_ids, self.target_ids], axis=1).tolist()
        digest = hashlib.sha256(np.asarray(pairs, dtype=np.int64).tobytes()).hexdigest()
        return {
            "method": "tli",
            "match": "bytes each token stands for (special tokens: the same special text)",
            "target_scheme": self.target.scheme,
            "drafter_scheme": self.drafter.scheme,
            "target_tokens": len(self.target.keys),
            "drafter_tokens": len(self.drafter.keys),
            "shared": len(pairs),
            "proposable": self.proposable,
            "min_shared": MIN_SHARED,
            "pairs": pairs if len(pairs) <= RECORDED_PAIRS else None,  # [drafter id, target id]
            "pairs_sha256": digest,
        }


def build_vocab_map(
    target_tokenizer, drafter_tokenizer, target_rows: int, drafter_rows: int, head_ids=None
) -> VocabMap:
    """The pair's shared tokens; a ConfigError naming the sizes when too few are shared. head_ids: the rows
    of a drafter head restricted by draft_vocab.json (None: all)."""
    target = read_vocabulary(target_tokenizer, target_rows, f"the target's tokenizer ({target_rows} rows)")
    drafter = read_vocabulary(drafter_tokenizer, drafter_rows, f"the drafter's tokenizer ({drafter_rows} rows)")
    pairs = sorted((d, target.keys[k]) for k, d in drafter.keys.items() if k in target.keys)
    smaller = min(len(target.keys), len(drafter.keys))
    if len(pairs) < MIN_SHARED * smaller:
        raise ConfigError(
            f"drafter and target vocabularies share {len(pairs)} tokens of {len(drafter.keys)} and "
            f"{len(target.keys)} ({len(pairs) / max(smaller, 1):.1%} of the smaller): a drafter of another "
            f"vocabulary needs at least {MIN_SHARED:.0%} of the smaller one (it drafts shared tokens only)"
        )
    head = set(range(drafter_rows)) if head_ids is None else set(head_ids)
    proposable = sum(1 for d, _ in pairs if d in head)
    if not proposable:
        raise ConfigError("the drafter's draft_vocab.json keeps no token that the target's vocabulary shares")
    measure_encoder(target, strict=False)  # a dummy space before its prompts, not shown to the drafter
    measure_encoder(drafter, strict=True)  # the drafter is shown the committed text re-encoded
    drafter_ids = np.array([d for d, _ in pairs], dtype=np.int64)
    target_ids = np.array([t for _, t in pairs], dtype=np.int64)
    to_drafter = [-1] * len(target.spelled)
    for d, t in pairs:
        to_drafter[t] = d
    shown = {t for k, t in target.keys.items() if not isinstance(k, bytes) and k in drafter.keys}
    text = [b"" if target.special[t] and t not in shown else s for t, s in enumerate(target.spelled)]
    return VocabMap(target, drafter, target_rows, drafter_rows, drafter_ids, target_ids, to_drafter, text, proposable)
