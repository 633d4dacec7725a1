"""Hugging Face eager backend: a real model with its KV cache, rolled back by position.

Two things here differ between the transformers releases dsi-mpi supports (see `SUPPORTED_TRANSFORMERS`),
and getting either wrong gives wrong tokens with no error, so both are decided once, at load:
- the keyword that passes the cache to `forward` (`cache=` from 5.2x, `past_key_values=` before; an
  unknown keyword is silently swallowed by `**kwargs`, and then no cache is used at all);
- how a cache layer is rolled back. The cache is a plain `DynamicCache()` without the model's config, so
  every layer keeps all positions (sliding-window models still see only their window: their attention
  mask applies it) and rolling back is "keep the first n positions" in every layer, the same operation
  in every release. Layer types that are not plain key/value tensors (recurrent or linear-attention
  states, quantized layers) cannot be rolled back that way: they are refused at load, from the layer types
  the model's config asks for (`check_config_layers`: a hybrid model would otherwise fail on its first
  forward, or worse, run) and from the cache a probe forward filled (`check_cache_layers`).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from transformers import DynamicCache

from dsi_mpi.backends.base import ModelRunner

SUPPORTED_TRANSFORMERS = ("5.17.0", "6")  # oldest tested release, first excluded major (setup.cfg says the same)


class UnsupportedModel(ValueError):
    """A model this backend cannot run exactly; raised at load, never after wrong tokens."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks: the longest ModuleList (Llama's model.layers, GPT-2's h, ...)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise UnsupportedModel(f"cannot find the decoder layers of {type(model).__name__}")
    return max(lists, key=len)


def cache_keyword(model: torch.nn.Module) -> str:
    """The name under which this model's forward takes its KV cache in the installed transformers."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise UnsupportedModel(f"{type(model).__name__}.forward takes neither cache= nor past_key_values=")


def _layer_length(layer) -> int:
    keys = getattr(layer, "keys", None)
    return 0 if keys is None or keys.numel() == 0 else int(keys.shape[-2])


def check_config_layers(model: torch.nn.Module) -> None:
    """The cache the model's own config asks for (what `generate` would build) may hold key/value layers,
    full or sliding-window: both are served by a full layer here. Anything else is a state that positions
    cannot be cut from."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    name = type(model).__name__
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config the cache cannot read: the probe forward decides
        return
    for i, layer in enumerate(layers):
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise UnsupportedModel(
                f"{name}: layer {i} keeps a {type(layer).__name__} (not plain keys and values), "
                "which dsi-mpi cannot roll back to a position"
            )


def check_cache_layers(cache, model_name: str) -> None:
    """Every layer must be a plain key/value layer, which `crop_cache` rolls back exactly."""
    from transformers.cache_utils import DynamicLayer

    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            raise UnsupportedModel(
                f"{model_name}: cache layer {i} is a {type(layer).__name__}, which dsi-mpi "
                "cannot roll back to a position (only plain key/value layers can be)"
            )


def crop_cache(cache, length: int) -> None:
    """Keep the first `length` positions of every layer. Layers may hold different lengths after a forward
    that was abandoned between layers; each is cut to `length` on its own."""
    for layer in cache.layers:
        if _layer_length(layer) > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def out_of_memory(err: BaseException) -> bool:
    """A failed allocation, in host or GPU memory (torch.cuda.OutOfMemoryError is no MemoryError), also where
    torch.compile wrapped it in an error of its own: the machine's limit, never a reason to try another way."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def adopt_model(runner: ModelRunner, model, eos_token_ids) -> None:
    """The fields every Hugging Face runner (eager or compiled) keeps of its model."""
    runner.model = model.eval()
    runner.device = next(model.parameters()).device
    runner.vocab_size = int(model.config.vocab_size)
    runner.eos_token_ids = tuple(int(t) for t in eos_token_ids)
    runner.cache_kw = cache_keyword(model)


class HFRunner(ModelRunner):
    """Runs `model` one chunk of new tokens at a time over a persistent KV cache."""

    def __init__(self, model, eos_token_ids: tuple[int, ...] = ()):
        super().__init__()
        adopt_model(self, model, eos_token_ids)
        self.cache = DynamicCache()
        layers = decoder_layers(model)
        self.n_layers = len(layers)
        for layer in layers:
            layer.register_forward_pre_hook(self._between_layers)
        self._probe()

    def _probe(self) -> None:
        """One token through the model: the cache must have been used, and be of a kind we can roll back."""
        name = type(self.model).__name__
        check_config_layers(self.model)
        try:
            self.forward([0], 1)
        except Exception as err:  # e.g. a recurrent layer asking a key/value cache for its state
            if out_of_memory(err):  # the machine's problem, not the architecture's
                raise
            first = (str(err).strip().splitlines() or [""])[0]
            raise UnsupportedModel(
                f"{name}: one token through the model with a key/value cache failed ({type(err).__name__}: {first})"
            ) from None
        check_cache_layers(self.cache, name)
        if self.cache.get_seq_length() != 1:
            raise UnsupportedModel(f"{name} did not fill the KV cache passed as {self.cache_kw}=")
        self.reset()
        self.computed_tokens = self.forward_calls = 0

    def _between_layers(self, module, args):
        if self._layer_callback is not None:
            self._layer_callback()

    @torch.inference_mode()
    def _forward(self, tokens: list[int], n_out: int) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=n_out, **{self.cache_kw: self.cache})
        return out.logits[0, -n_out:, :]

    def _crop(self, length: int) -> None:
        crop_cache(self.cache, length)

    def _argmax(self, scores: torch.Tensor, first_position: int) -> np.ndarray:
        return scores.argmax(dim=-1).to("cpu", torch.int64).numpy()
