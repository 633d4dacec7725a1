"""Calibrated int4 rounding (dsi_mpi/backends/calibrate.py): weights in quantize.py's own int4 format, which load
as an ordinary int4 drafter, and whose outputs on correlated inputs are closer to the original than plain rounding's."""

import pytest

torch = pytest.importorskip("torch")

from tiny_families import family_config  # noqa: E402

from dsi_mpi.backends.calibrate import calibrate_int4, calibrated_int4, input_moments  # noqa: E402
from dsi_mpi.backends.quantize import GROUP, INT4, dequantized, quantize_groups, quantized_linears  # noqa: E402


def correlated_inputs(n: int, width: int, draw: int = 0) -> torch.Tensor:
    """Rows of inputs that move together, as a layer's inputs on real text do: six fixed directions, mixed and
    with some noise by the seed `draw`."""
    basis = torch.randn(6, width, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(100 + draw)
    return torch.randn(n, 6, generator=gen) @ basis + 0.1 * torch.randn(n, width, generator=gen)


@pytest.mark.parametrize("width", [2 * GROUP, 5 * GROUP + 8])  # whole groups, and a padded last group
def test_calibrated_weights_are_int4_levels_that_quantize_finds_again(width):
    weight = torch.randn(24, width, generator=torch.Generator().manual_seed(1))
    x = correlated_inputs(400, width)
    out = calibrated_int4(weight, x.T @ x / len(x))
    assert out.shape == weight.shape
    assert torch.equal(dequantized(out, INT4), out)  # the packed backend's re-quantization changes nothing
    levels, _ = quantize_groups(out)
    assert levels.view(24, -1, GROUP).abs().amax(dim=2).eq(7).all()  # each group's scale is the one it was given


def test_calibration_halves_the_output_error_of_plain_rounding_on_correlated_inputs():
    weight = torch.randn(32, 3 * GROUP, generator=torch.Generator().manual_seed(2))
    x = correlated_inputs(500, 3 * GROUP)
    calibrated = calibrated_int4(weight, x.T @ x / len(x))
    plain = dequantized(weight, INT4)
    x_new = correlated_inputs(100, 3 * GROUP, draw=1)  # the same directions, other inputs
    error = ((x_new @ (weight - calibrated).T).norm() / (x_new @ (weight - plain).T).norm()).item()
    assert error < 0.5


def test_input_moments_are_the_mean_outer_product_of_each_linear_input():
    model_cls, config = family_config("llama", vocab=64)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    head = model.get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0][0]))
    sequences = [[3, 5, 7, 9], [4, 6, 8]]
    (moment,) = input_moments(model, [head], sequences)
    hook.remove()
    x = torch.cat(seen)
    torch.testing.assert_close(moment, x.T @ x / 7)


def test_a_calibrated_model_is_an_int4_drafter_with_its_embeddings_untouched():
    model_cls, config = family_config("llama", vocab=64)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = model_cls(config).eval()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    gen = torch.Generator().manual_seed(3)
    calibrate_int4(model, [torch.randint(3, 64, (12,), generator=gen).tolist() for _ in range(6)])
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    for linear in quantized_linears(model):
        assert torch.equal(dequantized(linear.weight, INT4), linear.weight)
