"""A drafter head that scores only the tokens the drafter is likely to propose (frequency-ranked drafting,
after FR-Spec, Zhao et al. 2025).

Why: on a small target the vocabulary projection is most of a drafter's cost. SmolLM2-135M's head is
49,152 x 576; on one CPU core it is 6.5 of a 2-layer drafter's 9.2 ms per token, so a drafter with the
whole head can have 2 layers at c = 0.2, and one with 16,384 rows 6 layers.

The head still returns logits over the whole vocabulary, -inf outside its rows, so the drafter's q is an
ordinary distribution whose support is the kept tokens: greedy drafts are kept tokens, sampled drafts are
drawn from q, and verification is unchanged. Which tokens are kept changes which drafts are proposed, never
which tokens are accepted (lossless either way).

A drafter folder asks for it with `draft_vocab.json`: {"token_ids": [...], ...} (train_smollm2_drafter.py
writes one, most frequent tokens of the target's own answers first).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FILE = "draft_vocab.json"


class SubsetHead(torch.nn.Module):
    """The rows `token_ids` of an output projection, scattered into a full-vocabulary row of -inf."""

    def __init__(self, weight: torch.Tensor, token_ids: list[int], vocab_size: int):
        super().__init__()
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=weight.device)
        self.register_buffer("token_ids", ids, persistent=False)
        self.weight = torch.nn.Parameter(weight.detach()[ids].clone(), requires_grad=False)
        self.vocab_size = vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = torch.nn.functional.linear(hidden, self.weight)
        out = scores.new_full((*scores.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.token_ids, scores)


def read_token_ids(folder: str | Path, vocab_size: int) -> list[int] | None:
    """The kept token ids of a drafter folder, or None where it has no `draft_vocab.json`. Raises ValueError
    with one line naming what is wrong."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        ids = json.loads(path.read_text())["token_ids"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a {FILE} with a token_ids list ({type(err).__name__}: {err})") from None
    if not ids or not all(isinstance(t, int) and 0 <= t < vocab_size for t in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{path}: token_ids must be distinct token ids in [0, {vocab_size}), at least one")
    return ids


def restrict_head(model, token_ids: list[int]) -> None:
    """Replace the model's output projection by its rows `token_ids` (a model without bias in its head)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: {FILE} needs an output projection without bias")
    model.set_output_embeddings(SubsetHead(head.weight, token_ids, int(head.weight.shape[0])))
