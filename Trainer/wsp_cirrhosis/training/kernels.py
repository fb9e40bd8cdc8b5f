"""Kernels over labels, positions or sample ids: (n,) x (m,) -> (n, m) contrastive weights.

Every kernel is a pure function ``kernel(a, b, *, param) -> (n, m)`` that runs on the inputs'
device and returns 1 where ``a[t] == b[i]``: that property keeps each anchor's augmented twin
a positive (``method.md``, "Loss"). Floating inputs keep their dtype; integer or boolean
inputs (labels, sample ids) give the default float dtype.
"""

from __future__ import annotations

import math

import torch


def _float_dtype(a: torch.Tensor) -> torch.dtype:
    return a.dtype if a.is_floating_point() else torch.get_default_dtype()


def dirac(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Equality kernel ``1[a_t == b_i]`` (weak labels for SupCon / WSP, sample ids for SimCLR).

    Args:
        a: (n,) int or float, values of the anchors.
        b: (m,) same dtype as ``a``, values of the candidates.

    Returns:
        (n, m) float, 1 where equal, 0 elsewhere.
    """
    return (a[:, None] == b[None, :]).to(_float_dtype(a))


def gaussian(a: torch.Tensor, b: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """Gaussian kernel ``exp(-(a_t - b_i)^2 / (2 sigma^2))`` on slice positions (y-Aware, WSP).

    Args:
        a: (n,) float, positions d of the anchors, in [0, 1].
        b: (m,) float, positions d of the candidates, in [0, 1].
        sigma: bandwidth in units of d, > 0; ``math.inf`` gives all ones (no positional prior).

    Returns:
        (n, m) float in (0, 1], same dtype and device as ``a``.

    Raises:
        ValueError: if ``sigma`` is not positive.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (math.inf turns the kernel off), got {sigma}")
    if math.isinf(sigma):
        return ones(a, b)
    diff = a[:, None] - b[None, :]
    return torch.exp(-(diff * diff) / (2.0 * sigma * sigma))


def window(a: torch.Tensor, b: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """Window kernel ``1[|a_t - b_i| < threshold]`` on slice positions (PCL, Zeng et al. 2021).

    Args:
        a: (n,) float, positions d of the anchors, in [0, 1].
        b: (m,) float, positions d of the candidates, in [0, 1].
        threshold: half-width of the window in units of d, > 0 (strict inequality).

    Returns:
        (n, m) float, 1 inside the window, 0 outside.

    Raises:
        ValueError: if ``threshold`` is not positive (the twin would lose its weight).
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 to keep equal positions positive, got {threshold}")
    return ((a[:, None] - b[None, :]).abs() < threshold).to(_float_dtype(a))


def ones(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Constant kernel: every pair has weight 1.

    Args:
        a: (n,) any dtype.
        b: (m,) any dtype.

    Returns:
        (n, m) float ones on ``a``'s device.
    """
    return torch.ones(a.shape[0], b.shape[0], dtype=_float_dtype(a), device=a.device)
