"""The one decode-step timing of the model scripts here (check_default_pair, train_default_pair,
train_smollm2_drafter): greedy single-token forwards over a KV cache, through dsi-mpi's own runner
(`HFRunner`), so the timing uses the cache keyword and the forward that a job uses in this transformers."""

from __future__ import annotations

import statistics
import time

import torch

from dsi_mpi.backends.hf import HFRunner


@torch.inference_mode()
def decode_step_ms(model, prompt_ids: list[int], steps: int) -> float:
    """Median ms of one greedy single-token forward with KV cache, after a prefill of `prompt_ids`."""
    runner = HFRunner(model)
    token = int(runner.greedy(prompt_ids, 1)[-1])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        token = int(runner.greedy([token], 1)[-1])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
