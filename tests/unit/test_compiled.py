"""The compiled backend's pure parts, its config keys, its recorded fallback to eager, and EMULATED ACCEPTANCE
over real forwards. Nothing here compiles (that costs tens of seconds a shape on a CPU): the compiled forwards
themselves are tested through a real MPI run in tests/mpi/test_compiled.py and by analysis/gpu_check.py --tiny."""

import pytest
import torch
from helpers import zero_latency_emulation

from dsi_mpi.backends import compiled
from dsi_mpi.backends.compiled import buckets_up_to, logit_bound, logits_mismatch, segment_starts, static_cache
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
    assert validate({"models": {"compile_buckets": [1, 8]}}).models.compile_buckets == (1, 8)
    for bad in ({"backend": "jit"}, {"compile_segments": 0}, {"compile_max_bucket": 0}, {"compile_buckets": [0, 8]}):
        with pytest.raises(ConfigError, match="models."):
            validate({"models": bad})
    with pytest.raises(ConfigError, match="models.compile_buckets must be a list of ints"):
        validate({"models": {"compile_buckets": ["8"]}})
    with pytest.raises(ConfigError, match="emulation.forwards"):
        validate({"emulation": {"forwards": "gpu"}})


def test_cache_capacity_covers_prompt_new_tokens_and_a_block():
    fixed = validate({"decoding": {"lookahead": 4, "max_new_tokens": 10}}).decoding
    assert cache_capacity(fixed, 30) >= 30 + 10 + 4 + 1
    auto = validate({"decoding": {"lookahead": "auto", "max_new_tokens": 10}}).decoding
    assert cache_capacity(auto, 30) >= 30 + 10 + 20


def test_a_model_that_cannot_compile_runs_eager_and_says_so(tiny_models, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise RuntimeError("no static cache for this one\nsecond line")

    monkeypatch.setattr(compiled.CompiledRunner, "__init__", refuse)
    models = {"kind": "hf", "target": tiny_models["target"], "dtype": "float32", "device": "cpu"}
    runner = build_runner("target", validate({"models": dict(models, backend="compiled")}))
    assert isinstance(runner, HFRunner)
    info = runner.compile_info
    assert info["backend"] == "eager" and info["requested"] == "compiled" and info["dtype"] == "float32"
    assert info["fallback"] == "compiled: RuntimeError: no static cache for this one"
    eager = build_runner("target", validate({"models": dict(models, backend="eager")})).compile_info
    assert eager["backend"] == "eager" and "fallback" not in eager


def test_out_of_memory_is_raised_never_a_fallback(tiny_models, monkeypatch):
    """A GPU's OutOfMemoryError is no MemoryError, and torch.compile may wrap either in its own error: still the
    machine's limit (eager would not fit either), never a reason to run eager."""

    def wrapped_oom(self, *args, **kwargs):
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.cuda.OutOfMemoryError as err:
            raise RuntimeError("backend='inductor' raised an error") from err

    models = {"kind": "hf", "target": tiny_models["target"], "dtype": "float32", "device": "cpu", "backend": "compiled"}
    for refuse in (wrapped_oom, lambda self, *a, **k: (_ for _ in ()).throw(MemoryError("host"))):
        monkeypatch.setattr(compiled.CompiledRunner, "__init__", refuse)
        with pytest.raises((RuntimeError, MemoryError)) as caught:
            build_runner("target", validate({"models": models}))
        assert not isinstance(caught.value, compiled.UnsupportedModel)


def test_cache_length_is_written_under_inference_mode(tiny_models):
    """The warm-up fills the static cache under inference mode; on a GPU that moves each layer's length counter
    to the device, making a new inference tensor, which crops from outside inference mode must still be able to
    set. On a CPU the move keeps the old tensor, so the move is made here by hand: a new tensor, as on a GPU."""
    runner = compiled.CompiledRunner.__new__(compiled.CompiledRunner)
    runner.cache, runner._length = static_cache(2, 8), -1
    keys = torch.zeros(1, 2, 1, 4)
    with torch.inference_mode():
        for layer in runner.cache.layers:
            layer.lazy_initialization(keys, keys)
            layer.cumulative_length = layer.cumulative_length.clone()  # what .to("cuda") gives there
    assert all(layer.cumulative_length.is_inference() for layer in runner.cache.layers)
    runner._set_length(5)  # a crop: outside inference mode
    assert [int(layer.cumulative_length) for layer in runner.cache.layers] == [5, 5]


def test_16_bit_logits_are_judged_by_greedy_tokens_and_a_bound_of_their_dtype():
    """float32 keeps its 1e-4 of the largest logit; bfloat16 admits the drift that fused kernels give a trained
    model (5.6% on SmolLM2-135M, which the old 3e-2 refused) and a swap of eager's near-ties, but not another
    greedy token where eager's top two are further apart than the bound, nor an error past 16 epsilons."""
    assert logit_bound(torch.float32) == 1e-4 and logit_bound(torch.bfloat16) == 0.125
    assert 0.015 < logit_bound(torch.float16) < 0.016
    ref = torch.tensor([[10.0, 2.0, 1.0], [9.0, 8.97, 0.0], [1.0, 5.0, 3.0]])  # largest logit 10
    drift = ref + torch.tensor([[0.56, 0.0, 0.0], [-0.05, 0.05, 0.0], [0.0, -0.3, 0.3]])  # row 1: a near-tie swaps
    assert logits_mismatch(drift, ref, torch.bfloat16) is None
    assert "relative error 0.056" in logits_mismatch(drift, ref, torch.float32)
    swapped = ref + torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -1.1, 1.1]])  # 2 apart: > 0.125 x 10
    assert "another greedy token at position 2" in logits_mismatch(swapped, ref, torch.bfloat16)
    assert "above the 0.125 allowed in bfloat16" in logits_mismatch(ref + 1.3, ref, torch.bfloat16)


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
