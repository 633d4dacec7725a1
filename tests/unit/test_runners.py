"""The model-execution layer: cached chunked forwards equal one full forward; rollback and aborted
forwards leave a cache that still gives the right answers; emulation is reproducible by position."""

import numpy as np
import pytest
import torch
from helpers import zero_latency_emulation
from transformers import AutoModelForCausalLM

from dsi_mpi.backends import common_prefix_len
from dsi_mpi.backends.emulated import EmulatedRunner, emulated_target_token
from dsi_mpi.backends.hf import HFRunner


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def target(tiny_models):
    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_models["target"]).eval()


def full_greedy(model, tokens):
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0].argmax(-1).numpy()


def test_chunks_crop_and_abort(target):
    seq = [5, 9, 100, 3, 77, 200, 31, 8, 64, 12, 99, 1]
    expected = full_greedy(target, seq)
    runner = HFRunner(target)
    assert runner.greedy(seq[:5], 5).tolist() == expected[:5].tolist()
    assert runner.greedy(seq[5:9], 2).tolist() == expected[7:9].tolist()
    runner.crop(3)  # roll back into the prefix
    assert runner.cache_len() == 3 and runner.tokens == seq[:3]
    calls = {"n": 0}

    def stop_at_second_layer():
        calls["n"] += 1
        if calls["n"] == 2:
            raise Stop

    runner.set_layer_callback(stop_at_second_layer)
    with pytest.raises(Stop):
        runner.greedy(seq[3:10], 7)  # aborted mid-forward: layers now disagree in length
    assert runner.cache_len() == 3
    runner.set_layer_callback(None)
    assert runner.greedy(seq[3:], 9).tolist() == expected[3:].tolist()


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2


def test_emulated_tokens_depend_on_position_only():
    emu = zero_latency_emulation()
    target, drafter = EmulatedRunner("target", emu, 7), EmulatedRunner("drafter", emu, 7)
    out = target.greedy(list(range(10)), 4)
    assert out.tolist() == [emulated_target_token(7, p, 50) for p in range(7, 11)]
    guesses = np.array([drafter.greedy([0], 1)[0] for _ in range(400)])
    truth = np.array([emulated_target_token(7, p, 50) for p in range(1, 401)])
    assert 0.4 < (guesses == truth).mean() < 0.6


def test_cached_logits_equal_a_full_forward(target):
    """The measurement behind the transformers-5.17 defect: with the cache passed under the wrong keyword the
    chunked logits differed from a full forward by 2.78; with it used they agree to float precision."""
    seq = [5, 9, 100, 3, 77, 200, 31, 8]
    with torch.inference_mode():
        full = target(torch.tensor([seq])).logits[0]
    runner = HFRunner(target)
    first = runner.forward(seq[:5], 5)
    rest = runner.forward(seq[5:], 3)
    assert torch.cat([first, rest]).sub(full).abs().max().item() < 1e-4
    assert runner.cache.get_seq_length() == len(seq)


def test_unsupported_transformers_release_is_refused():
    from dsi_mpi.backends.checks import check_transformers_version
    from dsi_mpi.io.config import ConfigError

    check_transformers_version("5.17.0")
    check_transformers_version("5.24.0")
    for version in ("4.56.2", "5.16.1", "6.0.0"):
        with pytest.raises(ConfigError, match=f"transformers {version} is not supported"):
            check_transformers_version(version)


def test_cache_layers_that_cannot_roll_back_are_refused():
    from tiny_families import family_config
    from transformers import DynamicCache

    from dsi_mpi.backends.hf import UnsupportedModel, check_cache_layers

    config = family_config("gemma2", vocab=32)[1]  # sliding-window layers, which a cache made from it keeps
    with pytest.raises(UnsupportedModel, match="cannot roll back"):
        check_cache_layers(DynamicCache(config=config), "Gemma2ForCausalLM")
    check_cache_layers(DynamicCache(), "Gemma2ForCausalLM")


@pytest.mark.parametrize("arch", ["Lfm2", "Mamba"])
def test_architecture_that_cannot_crop_its_cache_is_a_one_line_config_error(tmp_path, arch):
    """A recurrent (Mamba) or hybrid convolution/attention (LFM2) model keeps states that cannot be cut
    back to a position: the loader refuses it with one line naming the architecture, before any task."""
    import transformers

    from dsi_mpi.backends.loading import build_runner
    from dsi_mpi.io.config import ConfigError, validate

    sizes = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2)
    if arch == "Lfm2":
        sizes.update(
            intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"]
        )
    else:
        sizes.update(state_size=4)
    model_cls = "MambaForCausalLM" if arch == "Mamba" else f"{arch}ForCausalLM"
    getattr(transformers, model_cls)(getattr(transformers, f"{arch}Config")(**sizes)).save_pretrained(tmp_path / arch)
    cfg = validate({"models": {"kind": "hf", "target": str(tmp_path / arch), "dtype": "float32", "device": "cpu"}})
    with pytest.raises(ConfigError) as err:
        build_runner("target", cfg)
    message = str(err.value)
    assert "\n" not in message and model_cls in message and "not supported" in message, message
