"""The runner interface shared by the real and the emulated backends."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix: how much of a cache stays valid for a new sequence."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    if isinstance(a, list) and isinstance(b, list) and a[:n] == b[:n]:  # the usual case, 10x numpy's time
        return n
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


class ModelRunner:
    """One model plus its KV cache; subclasses implement `_forward`, `_crop` and the greedy rule."""

    eos_token_ids: tuple[int, ...] = ()  # the target stops at any of these (when stop_at_eos)
    vocab_size: int = 0

    def __init__(self) -> None:
        self.tokens: list[int] = []  # exactly the tokens whose keys/values are cached
        self._layer_callback: Callable[[], None] | None = None
        self.computed_tokens = 0  # tokens run through the model since the last reset_counters
        self.forward_calls = 0
        self.head_tokens: int | None = None  # a drafter head of only these many rows (backends/draft_vocab.py)

    def set_layer_callback(self, fn: Callable[[], None] | None) -> None:
        self._layer_callback = fn

    def cache_len(self) -> int:
        return len(self.tokens)

    def crop(self, length: int) -> None:
        if length < len(self.tokens):
            self._crop(length)
            del self.tokens[length:]

    def reset(self) -> None:
        self.crop(0)

    def forward(self, tokens: Sequence[int], n_out: int):
        """Extend the cache by `tokens`; return scores for the last `n_out` of them.
        If a layer callback raises (a cancelled task), the cache is rolled back to where it was."""
        tokens = [int(t) for t in tokens]
        if not tokens or not 1 <= n_out <= len(tokens):
            raise ValueError(f"forward needs 1 <= n_out <= len(tokens), got {n_out} and {len(tokens)}")
        before = len(self.tokens)
        try:
            scores = self._forward(tokens, n_out)
        except BaseException:
            self._crop(before)
            with contextlib.suppress(Exception):  # the forward's own error is the one to report
                self.sync()
            raise
        self.sync()
        self.tokens.extend(tokens)
        self.computed_tokens += len(tokens)
        self.forward_calls += 1
        return scores

    def sync(self) -> None:
        """Wait until this runner's device has done the work queued so far. A CUDA call returns once its work
        is queued, so a time stamped then would let the device's work overlap whatever the rank does next
        (drafting, the next task): every forward ends here, stopped or not, before anyone reads a clock.
        Nothing to wait for on a CPU or in LATENCY EMULATION (no `device`)."""
        device = getattr(self, "device", None)
        if getattr(device, "type", None) == "cuda":
            import torch

            torch.cuda.synchronize(device)

    def greedy(self, tokens: Sequence[int], n_out: int) -> np.ndarray:
        return self._argmax(self.forward(tokens, n_out), len(self.tokens) - n_out + 1)

    # --- backend hooks ---------------------------------------------------------------------------
    def _forward(self, tokens: list[int], n_out: int):
        raise NotImplementedError

    def _crop(self, length: int) -> None:
        raise NotImplementedError

    def _argmax(self, scores, first_position: int) -> np.ndarray:
        """Greedy tokens from scores; `first_position` is the sequence index of the first predicted token."""
        raise NotImplementedError
