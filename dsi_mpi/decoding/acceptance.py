"""Acceptance rules: which drafts stand, and which token the target puts where they stop.

Two rules share one interface, used by the verifier (`verify`) and the coordinator (the rest):
- Greedy: a draft stands (is accepted) while it equals the target's argmax; the target's argmax replaces
  the first that does not (the recovered token), and follows a fully accepted block (the bonus token).
- Sampling (Leviathan et al. 2023; Chen et al. 2023): draft x drawn from the drafter's q stands with
  probability min(1, p(x)/q(x)); the first that does not is replaced by a draw from norm(max(0, p - q));
  after a fully accepted block the next token is drawn from p. This keeps the target's distribution
  exactly. p and q are the warped distributions (temperature, then top-k, then top-p, as Hugging Face
  applies them). Every random number is keyed by (seed, prompt key, position, purpose), never by the
  order in which work happens, so results do not depend on ranks or arrival order.

A verification result always describes the first position at which drafts stop standing, `j`: greedy
results carry the target's argmax at every position (j is found by comparing); sampling results carry j
itself (the verifier ran the tests: it has p, and the task carries q(x) of each draft) and p at
position j, from which the coordinator draws the recovered token (it holds q there) or the bonus token.

A drafter may propose nothing (`draft` returns None: the n-gram drafter found no match), and a drafter
with `point_mass = True` proposes one token with certainty: its q is 1 there and 0 elsewhere, so a draft
stands with probability p(x) and a rejected one is replaced by a draw from p with x removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from dsi_mpi.io.config import DecodingConfig


class Stream(IntEnum):
    """Purposes of the random streams (the values key the streams: never renumber them)."""

    DRAFTING = 1  # the drafter's draw of a draft token from q
    ACCEPTANCE = 2  # the test min(1, p(x)/q(x)) of a draft
    RECOVERED = 3  # the draw from norm(max(0, p - q)): the recovered token that replaces a rejected draft
    TARGET = 4  # the target's own draw from p: the bonus token after a fully accepted block, or nonsi's token


def uniform(seed: int, key: int, position: int, purpose: Stream) -> float:
    """The one U[0,1) for this purpose at this sequence position of this prompt."""
    return float(np.random.default_rng([seed, key, position, purpose]).random())


def draw(probs: np.ndarray, u: float) -> int:
    """Inverse-CDF draw: the token whose cumulative probability first exceeds u."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(probs) - 1))


class PointMass(int):
    """q of a drafter that proposes one token with certainty (stored instead of a dense vector)."""

    def __getitem__(self, token: int) -> float:
        return 1.0 if token == int(self) else 0.0


def residual(p: np.ndarray, q) -> np.ndarray:
    """norm(max(0, p - q)); equal p and q leave nothing, and then p itself is the right law."""
    if isinstance(q, PointMass):
        r = p.copy()
        r[int(q)] = max(p[int(q)] - 1.0, 0.0)
    else:
        r = np.maximum(p - q, 0.0)
    total = r.sum()
    return r / total if total > 0 else p


def floats_to_payload(values) -> np.ndarray:
    """Probabilities travel bit for bit inside the int64 messages."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64)


def payload_to_floats(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64).view(np.float64)


class Greedy:
    sampled = False

    def draft(self, drafter, tokens, position: int, key: int) -> int | None:
        if getattr(drafter, "point_mass", False):
            return drafter.propose(tokens)
        return int(drafter.greedy(tokens, 1)[0])

    def task_extras(self, drafts: list[int], start: int) -> list[int]:
        return []

    def verify(self, target, tokens, n_out: int, extras, key: int) -> np.ndarray:
        return target.greedy(tokens, n_out)

    def next_token(self, target, tokens, position: int, key: int) -> int:
        """Plain decoding's choice (nonsi)."""
        return int(target.greedy(tokens, 1)[0])

    def stop(self, result, drafts: list[int], offset: int) -> int:
        """Index of the first draft that does not stand (len(drafts) if all do); drafts before
        `offset` are already committed and not compared again."""
        j = offset
        while j < len(drafts) and drafts[j] == result[j]:
            j += 1
        return j

    def check(self, result, j: int, position: int, draft: int, key: int) -> bool:
        return draft == int(result[j])

    def recovered(self, result, j: int, position: int, key: int) -> int:
        return int(result[j])

    def bonus(self, result, j: int, position: int, key: int) -> int:
        return int(result[j])

    def forget(self, position: int) -> None:
        pass


@dataclass
class Sampling:
    seed: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    sampled = True

    def __post_init__(self):
        self.q: dict[int, np.ndarray] = {}  # the drafter's distribution at each drafted position

    def probs(self, logits) -> np.ndarray:
        """Warp logits as Hugging Face does (temperature, top-k, top-p) and normalise, in float64."""
        import torch

        scores = logits.to(torch.float64) / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False, dim=-1)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= (1 - self.top_p)
            drop[..., -1:] = False
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return scores.softmax(dim=-1).cpu().numpy()

    def draft(self, drafter, tokens, position: int, key: int) -> int | None:
        if getattr(drafter, "point_mass", False):
            token = drafter.propose(tokens)
            if token is not None:
                self.q[position] = PointMass(token)
            return token
        q = self.probs(drafter.forward(tokens, 1))[0]
        self.q[position] = q
        return draw(q, uniform(self.seed, key, position, Stream.DRAFTING))

    def task_extras(self, drafts: list[int], start: int) -> list[int]:
        return floats_to_payload([self.q[start + i][x] for i, x in enumerate(drafts)]).tolist()

    def verify(self, target, tokens, n_out: int, extras, key: int) -> np.ndarray:
        """Run the acceptance tests where p is: return [j, p at position j (float bits)]."""
        p = self.probs(target.forward(tokens, n_out))
        q_of_draft = payload_to_floats(extras)
        drafts = [int(t) for t in tokens[len(tokens) - (n_out - 1) :]] if n_out > 1 else []
        first = target.cache_len() - n_out + 1  # sequence position of the first prediction
        j = 0
        while (
            j < len(drafts) and uniform(self.seed, key, first + j, Stream.ACCEPTANCE) * q_of_draft[j] < p[j, drafts[j]]
        ):
            j += 1
        return np.concatenate([[j], floats_to_payload(p[j])])

    def next_token(self, target, tokens, position: int, key: int) -> int:
        return draw(self.probs(target.forward(tokens, 1))[0], uniform(self.seed, key, position, Stream.TARGET))

    def stop(self, result, drafts: list[int], offset: int) -> int:
        return int(result[0])

    def check(self, result, j: int, position: int, draft: int, key: int) -> bool:
        p = payload_to_floats(result[1:])
        return uniform(self.seed, key, position, Stream.ACCEPTANCE) * self.q[position][draft] < p[draft]

    def recovered(self, result, j: int, position: int, key: int) -> int:
        r = residual(payload_to_floats(result[1:]), self.q[position])
        return draw(r, uniform(self.seed, key, position, Stream.RECOVERED))

    def bonus(self, result, j: int, position: int, key: int) -> int:
        return draw(payload_to_floats(result[1:]), uniform(self.seed, key, position, Stream.TARGET))

    def forget(self, position: int) -> None:
        """Drop q below `position` (committed text needs no more tests)."""
        for old in [p for p in self.q if p < position]:
            del self.q[old]


def rule_from_config(decoding: DecodingConfig):
    if not decoding.do_sample:
        return Greedy()
    return Sampling(decoding.seed, decoding.temperature, decoding.top_k, decoding.top_p)
