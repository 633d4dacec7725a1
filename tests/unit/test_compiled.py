"""The compiled backend's pure parts, its config keys, its recorded fallback to eager, and EMULATED ACCEPTANCE
over real forwards. Nothing here compiles (that costs tens of seconds a shape on a CPU): the compiled forwards
themselves are tested through a real MPI run in tests/mpi/test_compiled.py and by analysis/gpu_check.py --tiny."""

import pytest
import torch
from conftest import zero_latency_emulation

from dsi_mpi.backends import compiled
from dsi_mpi.backends.compiled import buckets_up_to, segment_starts
from dsi_mpi.backends.emulated import EmulatedAcceptanceRunner, EmulatedRunner
from dsi_mpi.backends.hf import HFRunner
from dsi_mpi.backends.loading import build_runner, cache_capacity
from dsi_mpi.io.config import ConfigError, validate


def test_buckets_and_segments():
    assert buckets_up_to(16) == (1, 2, 4, 8, 16)
    assert buckets_up_to(6) == (1, 2, 4, 6)
    assert buckets_up_to(1) == (1,)
    assert segment_starts(6, 1) == []
    assert segment_starts(6, 2) == [3]
    assert segment_starts(6, 3) == [2, 4]
    assert segment_starts(6, 6) == [1, 2, 3, 4, 5]
    assert segment_starts(2, 9) == [1]  # never more segments than layers


def test_backend_keys_are_checked():
    assert validate({"models": {"backend": "compiled"}}).models.backend == "compiled"
    for bad in ({"backend": "jit"}, {"compile_segments": 0}, {"compile_max_bucket": 0}):
        with pytest.raises(ConfigError, match="models."):
            validate({"models": bad})
    with pytest.raises(ConfigError, match="emulation.forwards"):
        validate({"emulation": {"forwards": "gpu"}})


def test_cache_capacity_covers_prompt_new_tokens_and_a_block():
    cfg = {"decoding": {"lookahead": 4, "max_new_tokens": 10}}
    assert cache_capacity(cfg, 30) >= 30 + 10 + 4 + 1
    assert cache_capacity({"decoding": {"lookahead": "auto", "max_new_tokens": 10}}, 30) >= 30 + 10 + 20


def test_a_model_that_cannot_compile_runs_eager_and_says_so(tiny_models, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise RuntimeError("no static cache for this one\nsecond line")

    monkeypatch.setattr(compiled.CompiledRunner, "__init__", refuse)
    models = {"kind": "hf", "target": tiny_models["target"], "dtype": "float32", "device": "cpu"}
    runner = build_runner("target", {"models": dict(models, backend="compiled")})
    assert isinstance(runner, HFRunner)
    info = runner.compile_info
    assert info["backend"] == "eager" and info["requested"] == "compiled" and info["dtype"] == "float32"
    assert info["fallback"] == "compiled: RuntimeError: no static cache for this one"
    eager = build_runner("target", {"models": dict(models, backend="eager")}).compile_info
    assert eager["backend"] == "eager" and "fallback" not in eager


def test_emulated_acceptance_runs_the_model_and_returns_emulated_tokens(tiny_models):
    emu = zero_latency_emulation(prompt_tokens=8)
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(tiny_models["target"]).eval()
    inner = HFRunner(model)
    real = EmulatedAcceptanceRunner("drafter", emu, 3, inner)
    plain = EmulatedRunner("drafter", emu, 3)
    seq = [5, 9, 11, 3, 7, 20, 31, 8]
    assert real.greedy(seq[:5], 2).tolist() == plain.greedy(seq[:5], 2).tolist()
    assert inner.computed_tokens == 5 and inner.cache_len() == 5
    real.crop(2)
    plain.crop(2)
    assert inner.cache_len() == 2
    assert real.greedy(seq[2:], 3).tolist() == plain.greedy(seq[2:], 3).tolist()
    calls = []
    real.set_layer_callback(lambda: calls.append(1))
    real.greedy([1], 1)
    assert calls, "the model's layer callback (cancellation) must reach the real forward"
    with torch.inference_mode():
        assert inner.cache_len() == real.cache_len() == 9


class Stop(Exception):
    pass


def test_compiled_runner_checks_between_segments_and_rolls_back(tiny_models):
    """One tiny compile (2 shapes, 3 one-layer segments): eager's greedy tokens through chunks and crops, the
    cancel check before each segment, and a forward abandoned mid-way leaves a cache that still answers right."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    load = lambda: AutoModelForCausalLM.from_pretrained(tiny_models["target"]).eval()  # noqa: E731
    runner = compiled.CompiledRunner(load(), capacity=32, segments=3, max_bucket=2)
    assert runner.compile_info["segments"] == 3 and runner.compile_info["compile_s"] > 0
    eager = HFRunner(load())
    seq = [5, 9, 100, 3, 77, 200, 31, 8, 64, 12, 99, 1]
    expected = eager.greedy(seq, len(seq)).tolist()
    assert runner.greedy(seq[:5], 5).tolist() == expected[:5]  # chunks 2 + 2 + 1
    runner.crop(3)
    calls = []

    def stop_in_second_segment():
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    runner.set_layer_callback(stop_in_second_segment)
    with pytest.raises(Stop):
        runner.greedy(seq[3:10], 7)
    assert runner.cache_len() == 3
    calls.clear()
    runner.set_layer_callback(lambda: calls.append(1))
    assert runner.greedy(seq[3:], 9).tolist() == expected[3:]
    assert len(calls) == 3 * 5  # 9 tokens = 5 chunks of at most 2, a check before each of 3 segments
