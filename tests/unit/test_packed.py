"""The packed CPU backend: the same logits as Hugging Face's forward, chunked as verifications are, rolled back
and cancelled like the eager runner; the models it cannot run fall back to eager with the reason recorded."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from dsi_mpi.backends import native
from dsi_mpi.backends.cpu import cpu_facts, last_level_cache_bytes, resolve_dtype
from dsi_mpi.backends.hf import HFRunner, UnsupportedModel
from dsi_mpi.backends.loading import build_runner
from dsi_mpi.backends.packed import PackedRunner, packable
from dsi_mpi.backends.packed_linear import NativeLinear, OneDnnLinear, choose_plain_rows
from dsi_mpi.io.config import validate


@pytest.fixture(autouse=True)
def one_thread():
    """As ranks run (models.threads = 1): the packed backend's own kernels are single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(folder, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def _models(folder: str, **extra):
    return validate({"models": {"kind": "hf", "target": folder, "dtype": "float32", "device": "cpu", **extra}})


def test_chunked_logits_equal_hugging_face_within_float_rounding(tiny_models):
    """A prompt, then blocks and single tokens, with a rollback between: the logits of every position agree
    with one full forward of the Hugging Face model (other kernels: to float precision, not bit for bit)."""
    model = _load(tiny_models["target"])
    seq = [5, 9, 100, 3, 77, 200, 31, 8, 64, 12, 250, 7]
    with torch.inference_mode():
        full = model(torch.tensor([seq])).logits[0]
    runner = PackedRunner(model, capacity=4)  # grows past its first buffers
    got = [runner.forward(seq[:5], 5), runner.forward(seq[5:9], 4)[:2]]  # positions 0-6 kept
    runner.crop(7)
    got += [runner.forward(seq[7:9], 2), runner.forward(seq[9:10], 1), runner.forward(seq[10:], 2)]
    torch.testing.assert_close(torch.cat(got), full, rtol=1e-4, atol=1e-4)
    assert runner.capacity >= len(seq) and runner.cache_len() == len(seq)
    info = runner.compile_info
    assert info["backend"] == "packed" and info["check_error"] <= 1e-4 and info["kernels"] == "native"


def test_a_cancelled_forward_leaves_the_cache_as_it_was(tiny_models):
    model = _load(tiny_models["target"])
    runner = PackedRunner(model)
    before = runner.forward([1, 2, 3], 1)
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) == 2:  # between the first and the second decoder layer
            raise KeyboardInterrupt

    runner.set_layer_callback(cancel)
    with pytest.raises(KeyboardInterrupt):
        runner.forward([4, 5], 2)
    runner.set_layer_callback(None)
    assert runner.tokens == [1, 2, 3]
    runner.crop(2)
    torch.testing.assert_close(runner.forward([3], 1), before, rtol=1e-5, atol=1e-5)


def test_a_restricted_drafter_head_scores_its_rows_only(tiny_models):
    runner = build_runner("drafter", _models(tiny_models["target"], drafter=tiny_models["noisy_head"]))
    assert runner.compile_info["backend"] == "packed" and runner.head_tokens is not None
    scores = runner.forward([5, 9, 12], 3)
    assert torch.isneginf(scores[:, 1::2]).all() and torch.isfinite(scores[:, ::2]).all()
    assert all(t % 2 == 0 for t in runner.greedy([40], 1))


def test_bf16_runs_with_fp32_logits(tiny_models):
    """In bf16 the head still computes fp32 logits (bf16 ones round to coarse steps and tie); the load check
    holds the runner to Hugging Face's bf16 forward within the bf16 bound."""
    runner = PackedRunner(_load(tiny_models["target"], torch.bfloat16))
    scores = runner.forward([5, 9, 12], 2)
    assert scores.dtype == torch.float32 and runner.compile_info["dtype"] == "bfloat16"
    assert runner.compile_info["check_error"] <= 1e-4


def test_models_it_cannot_run_fall_back_to_eager_with_the_reason(tiny_models):
    assert "model type 'gpt2'" in packable(_load(tiny_models["gpt2"]))
    with pytest.raises(UnsupportedModel, match="packed backend"):
        PackedRunner(_load(tiny_models["gpt2"]))
    runner = build_runner("target", _models(tiny_models["gpt2"], backend="packed"))
    assert isinstance(runner, HFRunner) and runner.compile_info["fallback"].startswith("packed: UnsupportedModel")
    auto = build_runner("target", _models(tiny_models["target"]))  # models.backend defaults to "auto"
    assert auto.compile_info["backend"] == "packed" and auto.compile_info["requested"] == "auto"
    assert auto.compile_info["cpu"]["model"] == cpu_facts()["model"]


def test_plain_weights_serve_a_prefix_of_widths_and_are_dropped_when_unused():
    torch.manual_seed(0)
    linears = [OneDnnLinear(torch.randn(64, 32), None) for _ in range(3)]
    record = choose_plain_rows(linears)
    plain = record["plain_rows"]
    assert plain == list(range(1, len(plain) + 1)) and set(plain) <= set(record["ms"])
    x = torch.randn(3, 32)
    torch.testing.assert_close(linears[0](x), linears[0].run(x, "packed"))
    linears[1].use_plain_for(frozenset())
    assert linears[1].plain is None and linears[1](x).shape == (3, 64)


def _kernels():
    kernels, why = native.load()
    assert kernels is not None, why  # CI machines have a C compiler
    return kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_native_product_is_right_and_the_same_for_a_row_whatever_the_rows(dtype):
    """Widths with a tail past the 16 lanes (and, for bf16's pairs of chunks, one chunk past a pair), fp32 and
    bf16 weights, with and without bias: the product equals torch's (to float rounding) and each row's outputs
    are bit for bit those of a one-row product."""
    torch.manual_seed(0)
    for rows_out, width in ((37, 64), (5, 83), (9, 48)):
        weight, bias, x = torch.randn(rows_out, width), torch.randn(rows_out), torch.randn(9, width)
        for b in (None, bias):
            linear = NativeLinear(weight, b, dtype, _kernels())
            expected = F.linear(x, weight.to(dtype).float(), b)
            torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-4)
            for n in range(1, 10):
                assert torch.equal(linear(x[:n])[n - 1], linear(x[n - 1 : n])[0]), (rows_out, width, n)


def test_the_int8_product_is_the_quantized_weights_product_and_the_same_for_a_row_whatever_the_rows():
    """int8 weights, a scale per row (a quantized drafter): the product of x with q * s (to float rounding),
    each row's outputs bit for bit those of a one-row product, and q * s within half a step of the weights."""
    from dsi_mpi.backends.quantize import quantize_rows

    torch.manual_seed(0)
    for rows_out, width in ((37, 64), (5, 83)):
        weight, bias, x = torch.randn(rows_out, width), torch.randn(rows_out), torch.randn(9, width)
        q, scale = quantize_rows(weight)
        assert (
            q.dtype == torch.int8 and ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-6).all()
        )
        linear = NativeLinear(weight, bias, torch.int8, _kernels())
        torch.testing.assert_close(linear(x), F.linear(x, q.float() * scale[:, None], bias), rtol=1e-5, atol=1e-4)
        for n in range(1, 10):
            assert torch.equal(linear(x[:n])[n - 1], linear(x[n - 1 : n])[0]), (rows_out, width, n)


def test_the_int4_product_is_the_grouped_weights_product_and_the_same_for_a_row_whatever_the_rows():
    """int4 weights, a scale per row and 32 inputs: the product of x with the dequantized weights (to float
    rounding), each row's outputs bit for bit those of a one-row product, q * s within half a step of the weights;
    widths that are not whole groups are padded."""
    from dsi_mpi.backends.quantize import GROUP, INT4, dequantized, quantize_groups

    torch.manual_seed(0)
    for rows_out, width in ((37, 64), (5, 83), (70, 96)):
        weight, bias, x = torch.randn(rows_out, width), torch.randn(rows_out), torch.randn(9, width)
        q, scale = quantize_groups(weight)
        assert q.shape[1] % GROUP == 0 and int(q.abs().max()) <= 7
        steps = scale.repeat_interleave(GROUP, dim=1)[:, :width]
        assert ((dequantized(weight, INT4) - weight).abs() <= steps / 2 + 1e-6).all()
        linear = NativeLinear(weight, bias, INT4, _kernels())
        torch.testing.assert_close(linear(x), F.linear(x, dequantized(weight, INT4), bias), rtol=1e-5, atol=1e-4)
        for n in range(1, 10):
            assert torch.equal(linear(x[:n])[n - 1], linear(x[n - 1 : n])[0]), (rows_out, width, n)


@pytest.mark.parametrize("drafter, dtype", [("quantized", "int8"), ("quantized:bits=4", "int4")])
def test_a_quantized_drafter_runs_quantized_and_checks_against_its_dequantized_model(tiny_models, drafter, dtype):
    """models.drafter = "quantized": the target's own weights in int8 (or int4); the packed runner's logits equal
    the Hugging Face model holding q * s (its load check), and eager runs that model where asked."""
    cfg = validate({"models": {"kind": "hf", "target": tiny_models["target"], "drafter": drafter, "threads": 1}})
    runner = build_runner("drafter", cfg)
    assert runner.compile_info["backend"] == "packed" and runner.compile_info["dtype"] == dtype
    assert runner.compile_info["check_error"] <= 1e-4 and runner.compile_info["batch_invariant"]
    eager = build_runner("drafter", cfg.replace("models", backend="eager", dtype="float32"))
    seq = [5, 9, 100, 3, 77, 200, 31, 8]
    drafted = runner.forward(seq, 8)
    torch.testing.assert_close(drafted, eager.forward(seq, 8), rtol=1e-4, atol=1e-4)
    target = build_runner("target", cfg.replace("models", dtype="float32"))
    assert (target.forward(seq, 8) - drafted).abs().max() > 1e-3  # really another model: the weights rounded


def test_a_drafter_model_in_int8_checks_against_its_dequantized_model(tiny_models):
    """models.drafter_dtype = "int8": a drafter model's products in int8 (here one with a frequency-ranked head), the packed
    runner's logits those of the Hugging Face drafter holding q * s; the target is untouched."""
    models = {"kind": "hf", "target": tiny_models["target"], "drafter": tiny_models["noisy_head"], "threads": 1}
    cfg = validate({"models": models | {"drafter_dtype": "int8"}})
    runner = build_runner("drafter", cfg)
    assert runner.compile_info["dtype"] == "int8" and runner.compile_info["check_error"] <= 1e-4
    assert build_runner("target", cfg).compile_info["dtype"] != "int8"
    seq = [5, 9, 100, 3, 77, 200, 31, 8]
    drafted = runner.forward(seq, 8)
    eager = build_runner("drafter", cfg.replace("models", backend="eager", dtype="float32"))
    torch.testing.assert_close(drafted, eager.forward(seq, 8), rtol=1e-4, atol=1e-4)
    plain = build_runner("drafter", cfg.replace("models", drafter_dtype="same", dtype="float32")).forward(seq, 8)
    scored = torch.isfinite(plain)
    assert torch.equal(scored, torch.isfinite(drafted)) and (plain - drafted)[scored].abs().max() > 1e-3


@pytest.mark.parametrize("d", [16, 48, 40])
def test_the_native_attention_is_causal_attention_and_the_same_for_a_query_whatever_the_block(d):
    """Head sizes of whole 16-float chunks (queries and sums in registers) and another (the general loop); the
    blocks' key counts cross the four-keys-at-a-time steps."""
    torch.manual_seed(0)
    heads, kv, cap, start, n = 6, 2, 40, 7, 6
    keys, values = torch.randn(kv, cap, d), torch.randn(kv, cap, d)
    q = torch.randn(n, heads, d)

    def run(queries, first):
        out, scores = torch.empty(queries.shape[0], heads, d), torch.empty(cap)
        _kernels().attention(
            queries.contiguous().data_ptr(), queries.shape[0], heads, kv, d, keys.data_ptr(), values.data_ptr(),
            cap, first, 0.25, out.data_ptr(), scores.data_ptr(),
        )  # fmt: skip
        return out

    got = run(q, start)
    mask = torch.arange(start + n)[None, :] <= torch.arange(start, start + n)[:, None]
    expected = F.scaled_dot_product_attention(
        q.transpose(0, 1), keys[:, : start + n].repeat_interleave(3, 0), values[:, : start + n].repeat_interleave(3, 0),
        attn_mask=mask, scale=0.25,
    ).transpose(0, 1)  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for i in range(n):
        assert torch.equal(run(q[i : i + 1], start + i)[0], got[i])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_layer_in_one_native_call_computes_what_its_steps_compute_bit_for_bit(tiny_models, dtype):
    """kernels.c's dsi_layer runs the steps packed_ops composes, in the same order: the same logits bit for bit,
    over a prefill and a verification, and after the cache grows (its buffers move)."""
    runner = PackedRunner(_load(tiny_models["target"], dtype), capacity=16)
    assert runner.ops.fused
    seq = [5, 9, 100, 3, 77, 200, 31, 8, 12, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]
    fused = torch.cat([runner.forward(seq[:14], 14), runner.forward(seq[14:], 6)])
    runner.reset()
    runner.ops.fused = False
    steps = torch.cat([runner.forward(seq[:14], 14), runner.forward(seq[14:], 6)])
    assert torch.equal(fused, steps)


def test_a_verification_sees_what_plain_decoding_sees_bit_for_bit(tiny_models):
    """With the native kernels the whole forward is batch invariant: a block's logits equal those of the
    same tokens fed one at a time, so si/dsi verify with exactly plain decoding's numbers."""
    runner = PackedRunner(_load(tiny_models["target"]))
    assert runner.compile_info["batch_invariant"] is True
    runner.forward([5, 9, 100], 1)
    block = runner.forward([3, 77, 200, 31], 4)
    runner.crop(3)
    single = torch.cat([runner.forward([t], 1) for t in (3, 77, 200, 31)])
    assert torch.equal(block, single)


def test_without_the_native_kernels_oneDNN_runs_the_products(tiny_models, monkeypatch):
    monkeypatch.setattr(native, "load", lambda: (None, "no C compiler (test)"))
    runner = PackedRunner(_load(tiny_models["target"]))
    info = runner.compile_info
    assert info["kernels"] == "onednn" and info["native_kernels"] == "no C compiler (test)"
    assert "plain_rows" in info["plain_rows_layers"] and info["check_error"] <= 1e-4


def test_dtype_auto_takes_bf16_where_products_in_it_are_fast():
    amd = "model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    intel = "model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    assert cpu_facts(amd) == {
        "model": "AMD EPYC 9R14",
        "flags": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"],
        "native_bf16": True,
    }
    assert not cpu_facts(intel)["native_bf16"]
    expected = "bfloat16" if cpu_facts()["native_bf16"] else "float32"
    assert resolve_dtype("auto", "cpu") == expected and resolve_dtype("float16", "cpu") == "float16"
    assert resolve_dtype("auto", "cpu", own_kernels=True) == "bfloat16"


def test_dtype_auto_on_the_packed_backend_is_bf16_where_its_own_kernels_run(tiny_models):
    """The own kernels widen bf16 weights in registers (fast on any CPU); with more threads oneDNN would run the
    products, and then bf16 only where the CPU multiplies it natively."""
    runner = build_runner("target", _models(tiny_models["target"], dtype="auto"))
    assert runner.compile_info["dtype"] == "bfloat16" and runner.compile_info["kernels"] == "native"
    torch.set_num_threads(2)
    threaded = build_runner("target", _models(tiny_models["target"], dtype="auto")).compile_info
    assert threaded["dtype"] == ("bfloat16" if cpu_facts()["native_bf16"] else "float32"), threaded


def test_the_native_argmax_is_torchs_ties_and_nans_included(tiny_models):
    """The greedy token of each row as torch.argmax gives it: the first of equal scores, the first NaN if any."""
    ops = PackedRunner(_load(tiny_models["target"])).ops
    scores = torch.randn(6, 300)
    scores[1, [7, 250]] = 9.0
    scores[2, [3, 5]] = float("nan")
    scores[3, :] = 0.0
    scores[4, 0] = float("nan")
    assert ops.argmax(scores).tolist() == scores.argmax(dim=-1).tolist()


def test_the_native_argmax_over_long_rows_is_torchs(tiny_models):
    """Rows of 64 scores or more go 64 at a time: the first of equal scores (across chunks, -0 and +0 equal), a
    NaN anywhere (the first chunk, the tail), infinities, and rows of a real vocabulary's length."""
    ops = PackedRunner(_load(tiny_models["target"])).ops
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(10, 203, generator=g)
    scores[1, [70, 150]] = 9.0  # a tie in two chunks
    scores[2, 5] = float("nan")  # in the first chunk
    scores[3, 200] = float("nan")  # in the tail
    scores[4, :] = 0.0
    scores[4, 64:] = -0.0
    scores[5, [3, 130]] = float("inf")
    scores[6, :] = float("-inf")
    scores[7, 202] = 50.0  # the largest in the tail
    scores[8] = scores[8].round()  # many ties
    scores[9, 64] = float("nan")
    assert ops.argmax(scores).tolist() == scores.argmax(dim=-1).tolist()
    vocab = torch.randn(5, 49152, generator=g)
    vocab[1, [100, 40000]] = 30.0
    assert ops.argmax(vocab).tolist() == vocab.argmax(dim=-1).tolist()


def test_an_idle_forward_changes_nothing_a_later_forward_sees(tiny_models):
    """runtime.keep_warm: a throwaway forward past the cache's end, whole or stopped after its first layer,
    leaves the tokens, the counters and the next forward's logits (bit for bit) as they were."""
    runner = PackedRunner(_load(tiny_models["target"], torch.bfloat16))
    runner.forward([5, 9, 100, 3], 1)
    expected = runner.forward([77, 200], 2)
    runner.crop(4)
    layers = []
    for stop in (lambda: False, lambda: layers.append(1) or len(layers) > 1):
        before = (list(runner.tokens), runner.computed_tokens, runner.forward_calls)
        runner.idle_forward(stop)
        assert (list(runner.tokens), runner.computed_tokens, runner.forward_calls) == before
        assert torch.equal(runner.forward([77, 200], 2), expected)
        runner.crop(4)
    assert len(layers) == 2  # stopped at the second layer's check
    assert runner.fits_cache or last_level_cache_bytes() < 2**20  # a tiny model: keep_warm "auto" is on
