"""Weights quantized to int8 (one scale per output row) or int4 (one per row and 32 inputs): the target's own
weights as a fast drafter.

Why: on a CPU a forward streams every weight from memory, so a model's cost is about its weights' bytes. The
target's own weights in int8 are a quarter of its fp32 bytes and half of its bf16 bytes, and the int8 model
agrees with the target on nearly every token (SmolLM2-135M-Instruct, held-out chat prompts, the target's own
greedy continuation: the drafter's argmax matched at 98% of positions; int4 per row: 68%, int4 in groups of 32:
78% in a first trial, 74.6% as made below; measured with inputs/models/train_smollm2_drafter.py's `acceptance`). No training, no second model.
`models.drafter_dtype = "int8"` does the same to any drafter model: SmolLM2's distilled drafter (its 736-answer
build) kept its held-out acceptance (0.457 -> 0.452) at half its bytes (c 0.26 -> 0.12 in the job).

int4 (`"quantized:bits=4"`, `drafter_dtype = "int4"`): symmetric in groups of GROUP inputs of a row, q = round(w /
s) in [-7, 7] with s = max |w| / 7 over the group; a quarter of bf16's bytes plus a scale per 32 weights.
SmolLM2's int4 self-drafter: held-out acceptance 0.746 at c 0.27-0.29 back to back (7.8-8.0 ms against 28.6-29.1,
analysis/forward_cost.py), 0.33 in the job (a 0.74 there); the int8 one 0.98 at c 0.43, and the faster pair.
Rounded with its errors compensated on the target's own text instead (calibrate.py), the same format reaches 0.833.

Symmetric per row: q = round(w / s) in [-127, 127] with s = max |w| / 127. `fake_quantize` puts q * s back into
the model's own (fp32) weights, so the Hugging Face model computes the quantized drafter's function (the eager
backend, hf_assisted's assistant, and the packed backend's load check all use it); the packed backend then
stores q as int8 and multiplies in its own kernel (kernels.c `dsi_linear_i8`), quantizing q * s again to the
same q and s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INT4 = torch.quint4x2  # the packed backend's name for 4-bit weights (two to a byte, in its own kernel only)
GROUP = 32  # inputs per int4 scale (kernels.c GROUP)
DTYPES = {"int8": torch.int8, "int4": INT4}


def dtype_name(dtype: torch.dtype) -> str:
    return "int4" if dtype == INT4 else str(dtype).removeprefix("torch.")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q as int8, s as fp32 per row) with weight ~ q * s[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-30) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.contiguous()


def quantize_groups(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """int4: (q in [-7, 7] as int8, s as fp32 per row and `group` inputs) with weight ~ q * s of its group, the
    width padded with zeros to whole groups; symmetric, s = max |w| / 7 over the group."""
    w = F.pad(weight.detach().float(), (0, -weight.shape[1] % group))
    groups = w.view(w.shape[0], -1, group)
    scale = groups.abs().amax(dim=2).clamp_min(1e-30) / 7.0
    q = torch.round(groups / scale[..., None]).clamp_(-7, 7).to(torch.int8)
    return q.view(w.shape[0], -1), scale.contiguous()


def dequantized(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What the quantized weight stands for, in fp32 (q * s; int4 by groups)."""
    if dtype == INT4:
        q, scale = quantize_groups(weight)
        w = (q.view(q.shape[0], -1, GROUP).float() * scale[..., None]).view(q.shape[0], -1)
        return w[:, : weight.shape[1]]
    q, scale = quantize_rows(weight)
    return q.float() * scale[:, None]


def quantized_linears(model) -> list[torch.nn.Linear]:
    """The products a quantized drafter holds quantized: every linear of the decoder layers, and the head, untied
    from the input embeddings first (the embeddings stay as they are)."""
    from dsi_mpi.backends.hf import decoder_layers

    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    linears = [m for layer in decoder_layers(model) for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    return [*linears, head]


def fake_quantize(model, dtype: torch.dtype = torch.int8) -> None:
    """Every quantized_linears weight holds q * s in place (see the module docstring; dtype int8 or INT4)."""
    with torch.no_grad():
        for linear in quantized_linears(model):
            linear.weight.copy_(dequantized(linear.weight, dtype).to(linear.weight.dtype))
