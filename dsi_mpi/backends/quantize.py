"""Weights quantized to int8, one scale per output row: the target's own weights as a fast drafter.

Why: on a CPU a forward streams every weight from memory, so a model's cost is about its weights' bytes. The
target's own weights in int8 are a quarter of its fp32 bytes and half of its bf16 bytes, and the int8 model
agrees with the target on nearly every token (SmolLM2-135M-Instruct, held-out chat prompts, the target's own
greedy continuation: the drafter's argmax matched at 98% of positions; int4 per row: 68%, int4 in groups of 32:
78%; measured with inputs/models/train_smollm2_drafter.py's `acceptance`). No training, no second model.
`models.drafter_dtype = "int8"` does the same to any drafter model: SmolLM2's distilled drafter kept its held-out
acceptance (0.457 -> 0.452) at half its bytes (c 0.26 -> 0.12 in the job).

Symmetric per row: q = round(w / s) in [-127, 127] with s = max |w| / 127. `fake_quantize` puts q * s back into
the model's own (fp32) weights, so the Hugging Face model computes the quantized drafter's function (the eager
backend, hf_assisted's assistant, and the packed backend's load check all use it); the packed backend then
stores q as int8 and multiplies in its own kernel (kernels.c `dsi_linear_i8`), quantizing q * s again to the
same q and s.
"""

from __future__ import annotations

import torch


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q as int8, s as fp32 per row) with weight ~ q * s[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-30) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.contiguous()


def fake_quantize(model) -> None:
    """Every linear of the decoder layers and the head holds q * s in place (see the module docstring); a head
    tied to the input embeddings is untied first (the embeddings stay as they are)."""
    from dsi_mpi.backends.hf import decoder_layers

    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    linears = [m for layer in decoder_layers(model) for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for linear in [*linears, head]:
            q, scale = quantize_rows(linear.weight)
            linear.weight.copy_((q.float() * scale[:, None]).to(linear.weight.dtype))
