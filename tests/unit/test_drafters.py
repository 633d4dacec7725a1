"""Drafters that need no training: the spec syntax of models.drafter, prompt lookup, and the point-mass q
that keeps sampling exact with a drafter that has no distribution."""

import numpy as np
import pytest

from dsi_mpi.backends.ngram import NGramDrafter, lookup
from dsi_mpi.decoding.acceptance import Greedy, PointMass, Sampling, residual
from dsi_mpi.io.config import ConfigError, validate
from dsi_mpi.io.drafter_spec import DrafterSpecError, parse_drafter


def test_spec_syntax():
    assert parse_drafter("inputs/models/drafter").kind == "model"
    assert parse_drafter("ngram").params == {"n": 3}
    assert parse_drafter("ngram:n=5").params == {"n": 5}
    assert parse_drafter("truncated:layers=2").params == {"layers": 2}
    assert parse_drafter("quantized").params == {"bits": 8} and parse_drafter("quantized:bits=8").needs_weights
    assert not parse_drafter("ngram").needs_weights and parse_drafter("truncated:layers=1").needs_weights


def _drafter_cfg(tiny_models, drafter: str):
    """A config whose models section build_runner("drafter", ...) can load: the tiny target and `drafter`."""
    models = {"kind": "hf", "target": tiny_models["target"], "drafter": drafter, "dtype": "float32", "device": "cpu"}
    return validate({"models": models | {"threads": 1}})


@pytest.mark.parametrize(
    "text, message",
    [
        ("ngram:n=0", "n-gram size n must be >= 1"),
        ("ngram:size=3", "unknown parameter 'size=3'"),
        ("ngram:n=x", "n must be an integer"),
        ("truncated", "needs layers=L"),
        ("truncated:layers=0", "needs layers=L"),
        ("quantized:bits=3", "bits=8 or bits=4"),
    ],
)
def test_bad_drafter_parameters_are_one_line_errors(text, message):
    with pytest.raises(DrafterSpecError, match=message):
        parse_drafter(text)
    with pytest.raises(ConfigError, match=message):
        validate({"models": {"drafter": text}})


def test_a_drafter_dtype_is_same_or_int8_and_int8_needs_weights():
    with pytest.raises(ConfigError, match='drafter_dtype must be "same", "int8" or "int4"'):
        validate({"models": {"drafter_dtype": "int2"}})
    assert parse_drafter("quantized:bits=4").params == {"bits": 4}
    with pytest.raises(ConfigError, match="sets its own dtype"):
        validate({"models": {"drafter": "quantized", "drafter_dtype": "int4"}})
    with pytest.raises(ConfigError, match="needs a drafter with weights"):
        validate({"models": {"drafter": "ngram", "drafter_dtype": "int8"}})
    assert (
        validate({"models": {"drafter": "truncated:layers=1", "drafter_dtype": "int8"}}).models.drafter_dtype == "int8"
    )


def test_hf_assisted_needs_a_drafter_model():
    with pytest.raises(ConfigError, match="use hf_prompt_lookup"):
        validate({"models": {"drafter": "ngram"}, "decoding": {"algorithms": ["hf_assisted"]}})
    validate({"models": {"drafter": "ngram"}, "decoding": {"algorithms": ["dsi", "hf_prompt_lookup"]}})


def test_lookup_takes_the_latest_longest_match():
    assert lookup(np.array([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3]), 3) == 7  # latest occurrence of 1 2 3
    assert lookup(np.array([5, 1, 2, 8, 4, 2]), 3) == 8  # falls back to a 1-gram
    assert lookup(np.array([1, 2, 3]), 3) is None
    assert lookup(np.array([4]), 3) is None


def test_ngram_drafter_proposes_through_the_rules():
    drafter = NGramDrafter(2, vocab_size=10)
    assert Greedy().draft(drafter, [1, 2, 3, 1, 2], 5, 0) == 3
    assert drafter.tokens == [1, 2, 3, 1, 2]
    drafter.crop(3)
    assert Greedy().draft(drafter, [4], 4, 0) is None
    rule = Sampling(seed=1)
    drafter.reset()
    assert rule.draft(drafter, [1, 2, 1], 3, 0) == 2 and rule.q[3] == PointMass(2) and rule.q[3][2] == 1.0


def test_point_mass_residual_is_p_without_the_draft():
    p = np.array([0.5, 0.3, 0.2])
    assert np.allclose(residual(p, PointMass(0)), [0, 0.6, 0.4])
    assert np.allclose(residual(np.array([0.0, 1.0, 0.0]), PointMass(1)), [0, 1, 0])  # nothing left: p itself


def test_a_frequency_ranked_head_scores_its_rows_and_nothing_else(tiny_models):
    """SubsetHead: the kept rows' logits, -inf elsewhere, so greedy and sampled drafts are kept tokens. The kept
    rows are a product of another shape than the full head's, which may take another kernel (it does on AMD
    EPYC): equal to float precision, not bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM

    from dsi_mpi.backends.draft_vocab import restrict_head

    model = AutoModelForCausalLM.from_pretrained(tiny_models["noisy"]).eval()
    ids = torch.tensor([[5, 9, 12, 40]])
    with torch.no_grad():
        full = model(ids).logits
        kept = [3, 40, 41, 100, 7]
        restrict_head(model, kept)
        part = model(ids).logits
    assert part.shape == full.shape
    torch.testing.assert_close(part[..., kept], full[..., kept], rtol=1e-5, atol=1e-5)
    others = torch.ones(full.shape[-1], dtype=torch.bool)
    others[kept] = False
    assert torch.isneginf(part[..., others]).all()
    assert set(part.argmax(-1).flatten().tolist()) <= set(kept)
    assert torch.softmax(part, -1)[..., others].sum() == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"token_ids": [1, 1]}', "distinct token ids"),
        ('{"token_ids": [1, 999999]}', "distinct token ids"),
        ('{"token_ids": []}', "at least one"),
        ('{"ids": [1]}', "token_ids list"),
        ("not json", "token_ids list"),
    ],
)
def test_a_bad_draft_vocab_file_is_a_one_line_error(tiny_models, tmp_path, text, message):
    import shutil

    from dsi_mpi.backends.loading import build_runner

    folder = tmp_path / "drafter"
    shutil.copytree(tiny_models["noisy"], folder)
    (folder / "draft_vocab.json").write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        build_runner("drafter", _drafter_cfg(tiny_models, str(folder)))
    assert "\n" not in str(err.value) and "draft_vocab.json" in str(err.value)


def test_a_drafter_folder_with_draft_vocab_gets_the_restricted_head(tiny_models):
    from dsi_mpi.backends.loading import build_runner

    runner = build_runner("drafter", _drafter_cfg(tiny_models, tiny_models["noisy_head"]))
    assert runner.head_tokens == len(range(0, runner.vocab_size, 2))
    assert all(t % 2 == 0 for t in runner.greedy([5, 9, 12], 3))
    plain = build_runner("drafter", _drafter_cfg(tiny_models, tiny_models["noisy"]))
    assert plain.head_tokens is None
