"""Prompt-lookup drafting: no model, no training, a few microseconds per draft.

The drafter looks for the latest earlier occurrence of the text's last n tokens (n from the configured
size down to 1) and proposes the token that followed it, as Hugging Face's `prompt_lookup_num_tokens` and
vLLM's n-gram proposer do (HF takes the first match in the text, we take the latest: in generated text
the latest repetition predicts best). With no match it proposes nothing, and the coordinator sends the
drafts it has (possibly none) instead of waiting. It proposes one token with certainty: in sampling its
q is a point mass at the proposal (dsi_mpi/decoding/acceptance.py).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dsi_mpi.backends.base import ModelRunner


def lookup(tokens: np.ndarray, max_n: int) -> int | None:
    """The token after the latest earlier occurrence of the longest matching suffix (<= max_n tokens)."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), 0, -1):
        windows = sliding_window_view(tokens[: length - 1], n)  # windows that have a successor
        hits = np.flatnonzero((windows == tokens[length - n :]).all(axis=1))
        if len(hits):
            return int(tokens[hits[-1] + n])
    return None


class NGramDrafter(ModelRunner):
    point_mass = True  # proposals carry no distribution: q is 1 at the proposal

    def __init__(self, n: int, vocab_size: int):
        super().__init__()
        self.n = n
        self.vocab_size = vocab_size
        self.n_layers = 0

    def _forward(self, tokens: list[int], n_out: int):
        return None  # nothing to compute: the token list the base class keeps is the whole state

    def _crop(self, length: int) -> None:
        pass

    def propose(self, tokens) -> int | None:
        """Extend the text by `tokens` and propose the next token, or None when nothing matches."""
        self.forward(tokens, 1)
        return lookup(np.asarray(self.tokens, dtype=np.int64), self.n)
