"""Hugging Face eager backend: a real model with its DynamicCache, rolled back by cropping."""
from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from dsi_mpi.backends.base import ModelRunner


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks: the longest ModuleList (Llama's model.layers, GPT-2's h, ...)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return max(lists, key=len)


class HFRunner(ModelRunner):
    """Runs `model` one chunk of new tokens at a time over a persistent KV cache."""

    def __init__(self, model, eos_token_ids: tuple[int, ...] = ()):
        super().__init__()
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.cache = DynamicCache(config=model.config)
        self.n_layers = len(decoder_layers(model))
        for layer in decoder_layers(model):
            layer.register_forward_pre_hook(self._between_layers)

    def _between_layers(self, module, args):
        if self._layer_callback is not None:
            self._layer_callback()

    @torch.inference_mode()
    def _forward(self, tokens: list[int], n_out: int) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=n_out)
        return out.logits[0, -n_out:, :]

    def _crop(self, length: int) -> None:
        """Keep the first `length` positions in every layer; layers may differ after an aborted forward."""
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.shape[-2] > length:
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]

    def _argmax(self, scores: torch.Tensor, first_position: int) -> np.ndarray:
        return scores.argmax(dim=-1).to("cpu", torch.int64).numpy()
