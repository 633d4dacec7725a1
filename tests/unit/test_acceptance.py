"""The acceptance rules as pure functions: warping means what it means in Hugging Face, draws follow
their law, residuals are normalised, and every random number is a function of its key alone."""

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from dsi_mpi.decoding.acceptance import (
    Greedy,
    Sampling,
    Stream,
    draw,
    floats_to_payload,
    payload_to_floats,
    residual,
    uniform,
)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.5, 3, 0.6)])
def test_warping_matches_hugging_face(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    ours = Sampling(0, temperature, top_k, top_p).probs(logits)
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone().double())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    np.testing.assert_allclose(ours, scores.softmax(-1).numpy(), atol=1e-12)


def test_draw_follows_its_law():
    p = np.array([0.1, 0.0, 0.6, 0.3])
    counts = np.bincount([draw(p, u) for u in np.random.default_rng(1).random(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, p, atol=0.015)
    assert counts[1] == 0


def test_residual_and_float_transport():
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.6, 0.2])
    np.testing.assert_allclose(residual(p, q), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(residual(p, p), p)
    x = np.array([0.1, 1 / 3, 1e-300])
    assert (payload_to_floats(floats_to_payload(x)) == x).all()


def test_random_streams_are_keyed_not_ordered():
    a = [uniform(1, 2, pos, Stream.ACCEPTANCE) for pos in range(5)]
    b = [uniform(1, 2, pos, Stream.ACCEPTANCE) for pos in reversed(range(5))][::-1]
    assert a == b and len(set(a)) == 5
    assert (
        uniform(1, 2, 3, Stream.ACCEPTANCE)
        != uniform(1, 3, 3, Stream.ACCEPTANCE)
        != uniform(2, 2, 3, Stream.ACCEPTANCE)
    )


def test_greedy_stop_skips_committed_positions():
    rule = Greedy()
    assert rule.stop(np.array([5, 6, 7, 8]), [5, 6, 9], 0) == 2
    assert rule.stop(np.array([4, 6, 7, 8]), [5, 6, 7], 1) == 3  # position 0 already committed
