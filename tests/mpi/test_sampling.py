"""Sampling is lossless in distribution: thousands of short generations with nonsi, si and dsi (a decent
and a badly wrong drafter, a drafter of another vocabulary; plain and warped settings) match the target's
exact distribution of the first two tokens (and with the n-gram drafter, whose q is a point mass), computed
here from the target's logits with Hugging Face's own warpers. Chi-square tests at a 1e-3 level per
comparison; the p-values of a correct implementation are uniform, so a failure here means a real bias (or
one in a thousand bad luck, fixed by the seeds: the test is deterministic)."""

import itertools
import json

import numpy as np
import pytest
import torch
from helpers import ROOT
from scipy.stats import chisquare

SAMPLES = 700  # per configuration; 10 configurations x 2 settings = 14000 generations, as before adaptive
SETTINGS = {"plain": dict(temperature=1.0, top_k=0, top_p=1.0), "warped": dict(temperature=0.7, top_k=4, top_p=0.9)}


def exact_distribution(target_folder, prompt, setting, vocab):
    """P(x1, x2 | prompt) from the target's logits, warped by transformers' own logits warpers."""
    from transformers import AutoModelForCausalLM
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    model = AutoModelForCausalLM.from_pretrained(target_folder, dtype=torch.float64).eval()
    warpers = [TemperatureLogitsWarper(setting["temperature"])]
    if setting["top_k"]:
        warpers.append(TopKLogitsWarper(setting["top_k"]))
    if setting["top_p"] < 1:
        warpers.append(TopPLogitsWarper(setting["top_p"]))

    def next_probs(tokens):
        ids = torch.tensor([tokens])
        with torch.no_grad():
            scores = model(ids).logits[:, -1, :]
        for warp in warpers:
            scores = warp(ids, scores)
        return scores.softmax(-1)[0].numpy()

    first = next_probs(prompt)
    return {(a, b): first[a] * next_probs(prompt + [a])[b] for a, b in itertools.product(range(vocab), repeat=2)}


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    from tiny_models import build_small_vocab_models
    from tiny_vocabs import add_small_cross_drafter

    root = tmp_path_factory.mktemp("small_vocab")
    return add_small_cross_drafter(build_small_vocab_models(root), root)


@pytest.fixture(scope="module")
def counts(small_models, tmp_path_factory):
    """Both settings in one launch of sampling_sweep.py: {name: {outcome: count}}."""
    from helpers import launch

    tmp = tmp_path_factory.mktemp("sampling")
    (tmp / "models.json").write_text(json.dumps(dict(small_models, settings=SETTINGS)))
    out = tmp / "counts.json"
    proc = launch(
        [str(ROOT / "tests/mpi/sampling_sweep.py"), str(tmp / "models.json"), str(out), str(SAMPLES), "2"],
        ranks=3,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("setting", ["plain", "warped"])
def test_sampled_outputs_follow_the_target_distribution(small_models, counts, setting):
    exact = exact_distribution(small_models["target"], [1, 2, 3], SETTINGS[setting], 6)
    outcomes = sorted(exact)
    expected = np.array([exact[o] for o in outcomes]) * SAMPLES
    big = expected >= 5  # pool rare outcomes into one cell
    mine = {name: counter for name, counter in counts.items() if name.endswith(f"/{setting}")}
    assert len(mine) == 16  # nonsi, and si, dsi and adaptive dsi for each of 5 drafters
    for name, counter in mine.items():
        observed = np.array([counter.get(json.dumps(list(o)), 0) for o in outcomes], dtype=float)
        assert observed.sum() == SAMPLES
        assert observed[expected == 0].sum() == 0, f"{name}: an impossible outcome was sampled"
        f_obs = np.append(observed[big], observed[~big].sum())
        f_exp = np.append(expected[big], expected[~big].sum())
        if f_exp[-1] == 0:
            f_obs, f_exp = f_obs[:-1], f_exp[:-1]
        p_value = chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue
        assert p_value > 1e-3, f"{name}: sampled distribution differs from the target's (p = {p_value:.2e})"
