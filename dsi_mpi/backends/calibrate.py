"""int4 weights rounded with their errors compensated: a closer int4 copy of the target, in the same format.

Why: rounding every weight to its nearest int4 level (quantize.quantize_groups) leaves SmolLM2's int4 self-drafter
agreeing with the target on 74.6% of held-out tokens. What a layer's output loses is not the weights' error itself
but (w - q) H (w - q)^T per row, H = E[x x^T] over the layer's inputs x: errors on inputs that move together can
cancel. So the inputs of a row are rounded one after another and each rounding error is moved onto the inputs not
yet rounded, weighted by how they co-vary on real text (the optimal brain surgeon update, as GPTQ applies it:
Frantar et al., ICLR 2023). The result is in the very format quantize.py makes (symmetric int4, a scale per row and
GROUP inputs): the same bytes, the same kernel, the same cost per forward, a closer copy (SmolLM2: 0.833 on the same
measure, docs/models.md). H comes from running the target on calibration text (`input_moments`).

A group's scale is fixed when its first input is reached (its largest weight then, / 7, as quantize_groups), and
that weight is rounded to +-7 whatever it has become, so that quantize_groups, run again on the result (the packed
backend and fake_quantize do at load), finds the same scale and the same levels: a calibrated model is an ordinary
int4 drafter (`models.drafter_dtype = "int4"`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dsi_mpi.backends.quantize import GROUP, quantized_linears

BLOCK = 4 * GROUP  # inputs rounded together before their errors reach the rest of the row (a whole number of groups)
DAMP = 0.01  # added to H's diagonal, as a fraction of its mean: H from finite text can be singular


def input_moments(model, linears: list[torch.nn.Linear], sequences: list[list[int]]) -> list[torch.Tensor]:
    """E[x x^T] over every token position of `sequences` (token id lists, one forward each) of each linear's input.
    Linears fed the same tensor (a layer's q, k and v; gate and up) share one product: the products are most of
    the calibration's time."""
    sums = [torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for m in linears]
    count = 0
    last = {"input": None, "product": None}  # the latest input and its x^T x (held, so `is` cannot see a reuse)

    def add(i):
        def hook(_module, inputs, _output):
            if inputs[0] is not last["input"]:
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
                last.update(input=inputs[0], product=(x.T @ x).double())
            sums[i] += last["product"]

        return hook

    hooks = [m.register_forward_hook(add(i)) for i, m in enumerate(linears)]
    try:
        with torch.no_grad():
            for ids in sequences:
                model(torch.tensor([ids]))
                count += len(ids)
    finally:
        for h in hooks:
            h.remove()
        last.clear()
    return [(s / max(1, count)).float() for s in sums]


def calibrated_int4(weight: torch.Tensor, moment: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """`weight` (rows x inputs) rounded to int4 levels of quantize_groups' format, each error moved onto the
    inputs after it by `moment` (E[x x^T] of the inputs); fp32, q * s of each weight."""
    width = weight.shape[1]
    pad = -width % GROUP  # quantize_groups pads rows with zeros to whole groups: so does this
    w = F.pad(weight.detach().float(), (0, pad))
    h = F.pad(moment.detach().float(), (0, pad, 0, pad))
    unseen = h.diagonal() == 0  # inputs that were zero on all the calibration text (and the padding)
    h[unseen, unseen] = 1.0
    h += damp * h.diagonal().mean() * torch.eye(h.shape[0])
    # rows of the inverse's upper Cholesky factor: how an input's error spreads onto the inputs after it
    spread = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.empty_like(w)
    for start in range(0, w.shape[1], BLOCK):
        stop = start + BLOCK
        errors = _round_block(w[:, start:stop], spread[start:stop, start:stop], out[:, start:stop])
        w[:, stop:] -= errors @ spread[start:stop, stop:]
    return out[:, :width]


def _round_block(w: torch.Tensor, spread: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Rounds the block's inputs in order into `out`, moving each error onto the block's later inputs (w changes in
    place); returns the scaled errors, which the caller moves onto the inputs after the block."""
    errors = torch.zeros_like(w)
    for i in range(w.shape[1]):
        if i % GROUP == 0:
            scale, top, top_level = _group_scale(w[:, i : i + GROUP])
        level = torch.round(w[:, i] / scale).clamp_(-7, 7)
        level = torch.where(top == i % GROUP, top_level, level)  # the group's largest weight stays its +-7
        out[:, i] = level * scale
        errors[:, i] = (w[:, i] - out[:, i]) / spread[i, i]
        w[:, i + 1 :] -= errors[:, i, None] * spread[i, None, i + 1 :]
    return errors


def _group_scale(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale per row as quantize_groups computes it, the column of each row's largest |weight|, its level +-7)."""
    magnitude = group.abs()
    scale = magnitude.amax(dim=1).clamp_min(1e-30) / 7.0
    top = magnitude.argmax(dim=1)
    return scale, top, 7.0 * torch.sign(group.gather(1, top[:, None])[:, 0])


def calibrate_int4(model, sequences: list[list[int]]) -> None:
    """Every product a quantized drafter quantizes (quantize.quantized_linears) rounded in place by
    calibrated_int4, H from the model's own inputs on `sequences` before any is rounded."""
    linears = quantized_linears(model)
    moments = input_moments(model, linears, sequences)
    with torch.no_grad():
        for linear, moment in zip(linears, moments):
            linear.weight.copy_(calibrated_int4(linear.weight, moment).to(linear.weight.dtype))
