"""LATENCY EMULATION backend: forwards replaced by sleeps, tokens by a seeded rule. Not a model.

It exists to measure the real MPI machinery (ranks, messages, scheduling, cancellation, records) against
the paper's time model. The target's token at sequence position p is a hash of (seed, p); the drafter
proposes the target's token with probability `acceptance`, independently per position (the paper's
i.i.d. acceptance model), else a different token. A forward that starts on an empty cache costs the
prefill time (TTFT), any other costs one per-token time (TPOT) whatever its length, as in the paper.
The sleep is cut into slices with the layer callback between them, so cancellation works as on a model.

EMULATED ACCEPTANCE (`emulation.forwards = "model"`, `EmulatedAcceptanceRunner`): the same tokens and the same
i.i.d. acceptance, but each forward is a real forward of a random-weight model (eager or compiled), so the
times are a real machine's for that model shape, and only which drafts stand is emulated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from dsi_mpi.backends.base import ModelRunner

if TYPE_CHECKING:
    from dsi_mpi.io.config import EmulationConfig

SLICES = 8  # emulated "layers" per forward: the granularity at which a stale forward can stop
OVERSLEEP_S = 1.5e-4  # time.sleep overshoots by about this here; the rest of a forward is waited out exactly


def _uniform(seed: int, position: int, stream: int) -> float:
    """A reproducible U[0,1) keyed by position, not by call order (results may arrive in any order)."""
    return float(np.random.default_rng([seed, stream, position]).random())


def emulated_target_token(seed: int, position: int, vocab_size: int) -> int:
    return int(_uniform(seed, position, 1) * vocab_size)


def emulated_match(seed: int, position: int, acceptance: float) -> bool:
    """Does the emulated drafter propose the target's token at this position?"""
    return _uniform(seed, position, 2) < acceptance


def emulated_prompt(seed: int, prompt_index: int, length: int, vocab_size: int) -> list[int]:
    rng = np.random.default_rng([seed, 7, prompt_index])
    return [int(t) for t in rng.integers(0, vocab_size, size=length)]


class EmulatedRunner(ModelRunner):
    """role "target" returns the target's tokens; role "drafter" returns i.i.d.-accepted guesses."""

    def __init__(self, role: str, emulation: EmulationConfig, seed: int):
        super().__init__()
        if role not in ("target", "drafter"):
            raise ValueError(role)
        self.role = role
        self.seed = seed
        self.vocab_size = int(emulation.vocab_size)
        self.acceptance = float(emulation.acceptance)
        self.ttft = float(getattr(emulation, f"{role}_ttft_s"))
        self.tpot = float(getattr(emulation, f"{role}_tpot_s"))
        self.n_layers = SLICES

    def _forward(self, tokens: list[int], n_out: int) -> int:
        seconds = self.ttft if not self.tokens else self.tpot
        end = time.perf_counter() + seconds
        for i in range(SLICES):
            if self._layer_callback is not None:
                self._layer_callback()
            remaining = end - time.perf_counter() - OVERSLEEP_S
            if remaining > 0:
                time.sleep(remaining / (SLICES - i))
        while time.perf_counter() < end:  # the last ~0.15 ms: a sleep would overshoot by about that much
            pass
        return n_out

    def _crop(self, length: int) -> None:
        pass  # nothing is cached but the token list the base class keeps

    def _argmax(self, n_out: int, first_position: int) -> np.ndarray:
        out = np.empty(n_out, dtype=np.int64)
        for i in range(n_out):
            p = first_position + i
            target = emulated_target_token(self.seed, p, self.vocab_size)
            if self.role == "drafter" and not emulated_match(self.seed, p, self.acceptance):
                target = (target + 1) % self.vocab_size
            out[i] = target
        return out


class EmulatedAcceptanceRunner(EmulatedRunner):
    """EMULATED ACCEPTANCE: every forward runs `model_runner` on the tokens (for its time, and its layer
    callbacks, so cancellation is real); the tokens returned are EmulatedRunner's."""

    def __init__(self, role: str, emulation: EmulationConfig, seed: int, model_runner: ModelRunner):
        super().__init__(role, emulation, seed)
        self.inner = model_runner
        self.n_layers = model_runner.n_layers
        self.device = model_runner.device
        self.compile_info = dict(getattr(model_runner, "compile_info", {}), acceptance="emulated")

    def set_layer_callback(self, fn) -> None:
        super().set_layer_callback(fn)
        self.inner.set_layer_callback(fn)

    def _forward(self, tokens: list[int], n_out: int) -> int:
        self.inner.crop(len(self.tokens))
        self.inner.forward(tokens, n_out)
        return n_out

    def _crop(self, length: int) -> None:
        self.inner.crop(length)


class EmulatedStage(EmulatedRunner):
    """LATENCY EMULATION of one stage of a P-stage target: 1/P of the target's latencies, and hidden states
    of `emulation.hidden_size` floats per token (zeros), so the messages between stages cost what real ones
    of that size cost. The last stage gives the emulated target's tokens."""

    def __init__(self, emulation: EmulationConfig, seed: int, stages: int, index: int):
        super().__init__("target", emulation, seed)
        self.ttft, self.tpot = self.ttft / stages, self.tpot / stages
        self.hidden_size = int(emulation.hidden_size)
        self.first, self.last = index == 0, index == stages - 1
        self.incoming = None

    def _forward(self, tokens: list[int], n_out: int):
        n_out = super()._forward(tokens, n_out)
        return n_out if self.last else np.zeros((len(tokens), self.hidden_size), dtype=np.float32)
