"""The model-execution layer: one small interface that every decoding algorithm drives.

A runner owns one model and its KV cache and knows which tokens the cache holds:
    forward(tokens, n_out) -> scores for the last n_out of the new tokens (cache extended by `tokens`)
    greedy(tokens, n_out)  -> the argmax token ids of those positions (np.int64 array)
    crop(length)           -> keep only the first `length` cached tokens (rollback after a rejection)
    set_layer_callback(fn) -> fn() runs between decoder layers, so a verifier can abandon a stale forward
Backends: `hf` (Hugging Face eager, DynamicCache) and `emulated` (LATENCY EMULATION: sleeps, no model).
"""

from dsi_mpi.backends.base import ModelRunner, common_prefix_len

__all__ = ["ModelRunner", "common_prefix_len"]
