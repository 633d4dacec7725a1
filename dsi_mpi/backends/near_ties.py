"""Where two greedy decodings of one target in different numerics part, and by how much the target hesitated there.

Why: in bf16 a forward's rounding depends on the kernels that compute it, so the packed backend in bf16 and
Hugging Face's `generate` in bf16 may pick different tokens where the model's two best tokens are nearly tied.
The project's rule (docs/lossless.md, "Lossless in bf16"): si and dsi commit only tokens the target chose at the numerics
of its own verification (on the packed backend, bit for bit plain decoding's: its kernels are batch
invariant), and every divergence from `generate` in the same dtype must be a near-tie: at the first position
where the two texts differ, the fp32 model's logits of the two tokens are within NEAR_TIE of each other.
`first_divergence` measures it, so that divergences are counted and shown, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEAR_TIE = 0.1  # fp32 logit margin between the two tokens at the first differing position


@dataclass(frozen=True)
class Divergence:
    position: int  # index into the generated tokens
    ours: int
    theirs: int
    margin: float  # |fp32 logit(ours) - fp32 logit(theirs)| there

    @property
    def near_tie(self) -> bool:
        return self.margin <= NEAR_TIE


def first_divergence(model_fp32, prompt: list[int], ours: list[int], theirs: list[int]) -> Divergence | None:
    """None where one token list is a prefix of the other; else the first differing position and the fp32
    model's margin between the two tokens given the common text before it."""
    n = min(len(ours), len(theirs))
    position = next((i for i in range(n) if ours[i] != theirs[i]), None)
    if position is None:
        return None
    with torch.inference_mode():
        ids = torch.tensor([prompt + ours[:position]])
        logits = model_fp32(input_ids=ids).logits[0, -1].float()
    margin = abs(float(logits[ours[position]] - logits[theirs[position]]))
    return Divergence(position, ours[position], theirs[position], margin)
