"""A drafter of another vocabulary that speaks the target's ids: token-level intersection (TLI, Timor et
al., ICML 2025, arXiv 2502.05202).

Its output is the drafter's logits at the shared tokens (backends/vocab_map.py), placed at their target ids,
-inf everywhere else: softmax of that is the drafter's distribution restricted to the shared tokens and
renormalised, so greedy drafts are its best shared token and sampled drafts are drawn from that q, whose q(x)
travels with the task as for any drafter. Verification is unchanged, so the output stays the target's.

The coordinator sees an ordinary runner: `tokens` are target ids, `crop` keeps a prefix of them. Inside, the
drafter's cache holds drafter ids that spell exactly the text of a prefix of those target ids (a "sync
point"), and the target ids after it are fed on the next forward:
- the prompt (a forward from an empty cache) is encoded by the drafter's own tokenizer from its text, after
  its own BOS where it has one: the encoding it was trained on;
- afterwards, target ids that are all shared are fed as their drafter ids, one for one (its own drafts come
  back this way as the ids it chose);
- a target id that is not shared is re-encoded from text: the bytes of the target ids since the last sync
  point go through the drafter's tokenizer (bytes that are no whole character through its single-byte
  tokens), or, where that does not spell the same bytes (a SentencePiece dummy space at the start of a
  piece), the whole text is encoded again and the cache kept up to where the two encodings agree.
A target special token the drafter lacks is shown as nothing (a BOS, chat markup). Target boundaries that
fall inside a drafter token are no sync points; cropping to one goes back to the sync point before it.
"""

from __future__ import annotations

import numpy as np
import torch

from dsi_mpi.backends.base import ModelRunner, common_prefix_len
from dsi_mpi.backends.vocab_map import VocabMap


def align(target_lengths, drafter_lengths, drafter_base: int, shift: int = 0, trusted: int | None = None) -> list[int]:
    """For each boundary after a target token: the drafter length that ends at the same byte, -1 where none.
    Offsets count from the piece's start; drafter offsets are `shift` bytes ahead of the target's (a lead
    space of the drafter's encoding, or one stripped from the target's), and only those up to `trusted`."""
    ends, offset, n = {0: drafter_base}, 0, drafter_base
    for length in drafter_lengths:
        offset, n = offset + length, n + 1
        if trusted is None or offset <= trusted:
            ends[offset] = n
    out, offset = [], shift
    for length in target_lengths:
        offset += length
        out.append(ends.get(offset, -1))
    return out


class TLIDrafter(ModelRunner):
    """`inner` (the drafter model's runner, drafter ids) wrapped to take and propose target ids."""

    def __init__(self, inner: ModelRunner, vocab_map: VocabMap):
        super().__init__()
        self.inner, self.map = inner, vocab_map
        self.vocab_size = vocab_map.target_rows
        self.n_layers = inner.n_layers
        self.model = getattr(inner, "model", None)
        self.device = getattr(inner, "device", torch.device("cpu"))
        self.compile_info = getattr(inner, "compile_info", None)
        self.head_tokens = vocab_map.proposable
        self.vocabulary = vocab_map.record()  # for the results file
        self.assistant_kwargs = {  # Hugging Face's Universal Assisted Generation (hf_assisted)
            "tokenizer": vocab_map.target.tokenizer,
            "assistant_tokenizer": vocab_map.drafter.tokenizer,
        }
        self._rows = torch.as_tensor(vocab_map.drafter_ids, device=self.device)
        self._cols = torch.as_tensor(vocab_map.target_ids, device=self.device)
        self._sync = [0]  # per target boundary 0..len(tokens): drafter ids spelling exactly that prefix, or -1
        self._fed = 0  # the last sync point fed: target ids after it are fed on the next forward
        self.reencoded = 0  # forwards that re-encoded text (tests and curiosity)

    def set_layer_callback(self, fn) -> None:
        super().set_layer_callback(fn)
        self.inner.set_layer_callback(fn)

    def forward(self, tokens, n_out: int):
        """Scores over the target's vocabulary: the drafter's at the shared tokens, -inf elsewhere."""
        shared = super().forward(tokens, n_out)
        out = shared.new_full((shared.shape[0], self.vocab_size), float("-inf"))
        out[:, self._cols] = shared
        return out

    def greedy(self, tokens, n_out: int) -> np.ndarray:
        """The best shared token, as a target id (the argmax over the shared rows: no vocabulary-wide row)."""
        best = super().forward(tokens, n_out).argmax(dim=-1)
        return self._cols[best].to("cpu", torch.int64).numpy()

    def _forward(self, tokens: list[int], n_out: int) -> torch.Tensor:
        """The drafter's scores at the shared tokens (in `map.target_ids` order) after feeding what its
        cache lacks of the text."""
        if n_out != 1:
            raise ValueError("a drafter of another vocabulary scores one position per forward")
        pending = self.tokens[self._fed :] + tokens
        plan = self._mapped(pending) if self._fed else None
        if plan is None and self._fed:
            plan = self._local(pending)
        if plan is None:
            plan = self._whole(self.tokens + tokens)
        keep, ids, base, sync = plan
        self.inner.crop(keep)
        logits = self.inner.forward(ids, 1)  # a DraftInterrupted here leaves the inner cache at `keep`
        self._sync[base + 1 :] = sync
        self._fed = len(self._sync) - 1
        while self._sync[self._fed] < 0:  # the text's end inside a drafter token (a mismatch): sync before it
            self._fed -= 1
        return logits[:, self._rows]

    def _mapped(self, pending: list[int]):
        """All shared: their drafter ids, one for one, after the last sync point."""
        to_drafter = self.map.to_drafter
        ids = [to_drafter[t] for t in pending]
        if min(ids, default=0) < 0:
            return None
        keep = self._sync[self._fed]
        return keep, ids, self._fed, [keep + j + 1 for j in range(len(ids))]

    def _local(self, pending: list[int]):
        """The text since the last sync point, encoded by the drafter on its own; None where that does not
        spell the same bytes (or spells nothing: then the whole text decides)."""
        text = self.map.text
        data = b"".join(text[t] for t in pending)
        ids = self.map.drafter.encode(data)
        if not ids or self.map.drafter.spell(ids) != data:
            return None
        self.reencoded += 1
        keep, spelled = self._sync[self._fed], self.map.drafter.spelled
        sync = align([len(text[t]) for t in pending], [len(spelled[i]) for i in ids], keep)
        return keep, ids, self._fed, sync

    def _whole(self, everything: list[int]):
        """The whole text encoded by the drafter's tokenizer, after its BOS; the cache is kept where it agrees.
        A SentencePiece target's dummy space before the prompt is not shown; the drafter's own may be added."""
        drafter, text = self.map.drafter, self.map.text
        data = b"".join(text[t] for t in everything)
        strip = len(self.map.target.lead) if self.map.target.lead and data.startswith(self.map.target.lead) else 0
        data = data[strip:]
        body = drafter.encode(data)
        prefix = [] if body[: len(drafter.prefix)] == drafter.prefix else drafter.prefix
        ids = prefix + body
        if not ids:
            ids = list(drafter.prefix) or [0]  # nothing to show (only special tokens it lacks): one token to score
        spelled = drafter.spell(body)
        lead = max((0, len(drafter.lead)), key=lambda n: (_agreeing_bytes(spelled[n:], data), -n))
        trusted = lead + _agreeing_bytes(spelled[lead:], data)
        lengths = [len(drafter.spelled[i]) for i in body]
        sync = align([len(text[t]) for t in everything], lengths, len(prefix), lead - strip, trusted)
        keep = min(common_prefix_len(self.inner.tokens, ids), len(ids) - 1)  # at least one token to score
        self.reencoded += 1
        return keep, ids[keep:], 0, sync

    def _crop(self, length: int) -> None:
        """Back to the last sync point at or before `length` whose drafter ids are still cached."""
        del self._sync[length + 1 :]
        i = min(self._fed, length)
        while not 0 <= self._sync[i] <= len(self.inner.tokens):
            i -= 1
        self.inner.crop(self._sync[i])
        self._fed = i


def _agreeing_bytes(a: bytes, b: bytes) -> int:
    """Length of the common prefix of two byte strings."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])
