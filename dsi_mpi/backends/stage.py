"""One pipeline stage of a real target: a contiguous range of its decoder layers with their own KV cache.

The stage is the model's own class rebuilt with only its layers (re-indexed from 0, so its DynamicCache
holds those layers only), and run through the model's own forward: the first stage from token ids, the
others from the previous stage's hidden states (`inputs_embeds`); stages before the last skip the final
norm, the last applies norm and head. That is exactly the full model's computation only where the base
model does nothing to `inputs_embeds` but run the layers: the Llama layout (rotary positions inside the
layers). Other architectures add position embeddings or scale the input (GPT-2, Gemma) and are refused.
Weights: only this stage's tensors are read (dsi_mpi.backends.split.Checkpoint); a middle stage builds no
embedding at all, the first and the last one vocabulary matrix (tied: the embedding is the head's storage).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from transformers import DynamicCache

from dsi_mpi.backends.base import ModelRunner
from dsi_mpi.backends.checks import layer_count
from dsi_mpi.backends.hf import HFRunner, cache_keyword, check_config_layers, decoder_layers
from dsi_mpi.backends.split import Checkpoint, SplitError, layer_prefix, stage_ranges
from dsi_mpi.io.config import ConfigError


def _no_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5.2x keeps it elsewhere; random init only costs time
        return contextlib.nullcontext()
    return no_init_weights()


def build_stage_model(folder: str, dtype, stages: int, index: int):
    """The model class of `folder` holding stage `index` of `stages`: its layers, embedding (first) and
    norm + head (last), loaded tensor by tensor. Returns (model, (first layer, end layer))."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    checkpoint = Checkpoint(folder)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    ranges = stage_ranges(checkpoint, layer_count(config), stages, tied)
    start, end = ranges[index]
    first, last = index == 0, index == stages - 1
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = end - start
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[start:end]
    if not (first or last):
        cfg.vocab_size, cfg.pad_token_id = 1, None  # no vocabulary matrix at all
    cfg.tie_word_embeddings = True  # one vocabulary matrix: the embedding (first) or the head (last)
    with _no_init():
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    base = model.base_model
    if not last:
        base.norm = torch.nn.Identity()
    if model.get_output_embeddings().weight is not base.embed_tokens.weight:
        model.get_output_embeddings().weight = base.embed_tokens.weight
    head_key = "lm_head.weight" if "lm_head.weight" in checkpoint.entries else "model.embed_tokens.weight"
    prefix = base_prefix = model.base_model_prefix + "."
    with torch.no_grad():
        for name, param in model.named_parameters():  # shared parameters come once
            if name in (f"{prefix}embed_tokens.weight", "lm_head.weight"):
                if not (first or last):
                    continue
                key = "model.embed_tokens.weight" if first else head_key
            elif name.startswith(f"{base_prefix}layers."):
                j, rest = name[len(base_prefix) + 7 :].split(".", 1)
                key = layer_prefix(start + int(j)) + rest
            else:
                key = "model." + name[len(base_prefix) :] if name.startswith(base_prefix) else name
            if key not in checkpoint.entries:
                raise ConfigError(f"target {folder!r}: stage parameter {name} has no tensor {key} in the checkpoint")
            try:
                checkpoint.read_into(key, param)
            except SplitError as err:
                raise ConfigError(f"target {folder!r}: {err}") from None
    return model.eval(), (start, end)


class HFStageRunner(HFRunner):
    """A stage as a runner: `incoming` (the previous stage's hidden states, float32 [tokens, hidden]) is set
    before each forward of a stage other than the first; forward returns hidden states, or on the last stage
    the logits (so the acceptance rules run there unchanged)."""

    def __init__(self, model, first: bool, last: bool, layers: tuple[int, int], eos_token_ids=()):
        ModelRunner.__init__(self)  # not HFRunner's: a stage cannot probe the model alone
        self.model = model
        self.base = model.base_model
        self.first, self.last, self.layers = first, last, layers
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = int(model.config.vocab_size)
        self.hidden_size = int(model.config.hidden_size)
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.cache_kw = cache_keyword(self.base)
        self.cache = DynamicCache()
        self.incoming = None
        check_config_layers(model)
        blocks = decoder_layers(self.base)
        self.n_layers = len(blocks)
        for layer in blocks:
            layer.register_forward_pre_hook(self._between_layers)

    @torch.inference_mode()
    def _forward(self, tokens: list[int], n_out: int) -> torch.Tensor:
        kw = {self.cache_kw: self.cache, "use_cache": True}
        if self.first:
            kw["input_ids"] = torch.tensor([tokens], dtype=torch.long, device=self.device)
        else:
            kw["inputs_embeds"] = torch.from_numpy(self.incoming).to(self.device, self.dtype)[None]
        if self.last:
            return self.model(logits_to_keep=n_out, **kw).logits[0, -n_out:, :]
        return self.base(**kw).last_hidden_state[0]


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
