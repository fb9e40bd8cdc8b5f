"""Kernels: shapes, device/dtype, ones on equal inputs, closed-form values, bad parameters."""

import math

import pytest
import torch

from wsp_cirrhosis.training.kernels import dirac, gaussian, ones, window

KERNELS = {
    "dirac": lambda a, b: dirac(a, b),
    "gaussian": lambda a, b: gaussian(a, b, sigma=0.3),
    "gaussian_inf": lambda a, b: gaussian(a, b, sigma=math.inf),
    "window": lambda a, b: window(a, b, threshold=0.1),
    "ones": lambda a, b: ones(a, b),
}


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_is_n_by_m_and_one_on_equal_inputs(name, dtype):
    a = torch.rand(5, dtype=dtype)
    b = torch.cat([a[:2], torch.rand(2, dtype=dtype)])
    k = KERNELS[name](a, b)
    assert k.shape == (5, 4)
    assert k.dtype == dtype and k.device == a.device
    torch.testing.assert_close(k[:2, :2].diagonal(), torch.ones(2, dtype=dtype), rtol=0, atol=0)
    assert ((k >= 0) & (k <= 1)).all()


def test_dirac_on_integer_labels_gives_default_float():
    labels = torch.tensor([0, 1, 2, 1])
    k = dirac(labels, labels)
    assert k.dtype == torch.get_default_dtype()
    assert torch.equal(k, (labels[:, None] == labels[None, :]).float())


def test_gaussian_matches_formula():
    a, b = torch.rand(4, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    sigma = 0.2 + torch.rand(()).item()
    expected = [[math.exp(-((x - y) ** 2) / (2 * sigma**2)) for y in b.tolist()] for x in a.tolist()]
    torch.testing.assert_close(gaussian(a, b, sigma=sigma), torch.tensor(expected, dtype=torch.float64))


def test_gaussian_with_infinite_sigma_is_all_ones():
    a, b = torch.rand(3), torch.rand(6)
    assert torch.equal(gaussian(a, b, sigma=math.inf), torch.ones(3, 6))


def test_window_is_strict():
    a = torch.tensor([0.0, 0.5], dtype=torch.float64)
    b = torch.tensor([0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(window(a, b, threshold=0.25), expected)
    assert torch.equal(window(a, b, threshold=0.26)[1], torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda a: gaussian(a, a, sigma=0.0), "sigma must be > 0"),
        (lambda a: gaussian(a, a, sigma=-1.0), "sigma must be > 0"),
        (lambda a: window(a, a, threshold=0.0), "threshold must be > 0"),
    ],
    ids=["sigma_zero", "sigma_negative", "threshold_zero"],
)
def test_bad_kernel_parameter_raises_value_error(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call(torch.rand(3))
