"""Naive float64 reference of method.md's loss: a double loop over anchors and candidates.

Written from the text of method.md ("Loss"), independently of wsp_cirrhosis.losses: plain Python
floats, one anchor t and one candidate i at a time, no tensors, no masking tricks.
"""

from __future__ import annotations

import math
from typing import Sequence


def _normalise(v: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _weight(method: str, t: int, i: int, sample: list[int], y, d, sigma, threshold) -> float:
    """w(t, i) for i != t, from method.md's list of methods."""
    if method == "simclr":  # only the other view of the same slice
        return 1.0 if sample[t] == sample[i] else 0.0
    k_y = 1.0
    if method in ("supcon", "wsp"):
        k_y = 1.0 if y[sample[t]] == y[sample[i]] else 0.0
    k_d = 1.0
    gap = 0.0 if d is None else d[sample[t]] - d[sample[i]]
    if method in ("positional", "wsp"):
        k_d = 1.0 if math.isinf(sigma) else math.exp(-gap * gap / (2.0 * sigma * sigma))
    if method == "pcl":
        k_d = 1.0 if abs(gap) < threshold else 0.0
    return k_y * k_d


def reference_loss(
    z1: Sequence[Sequence[float]],
    z2: Sequence[Sequence[float]],
    labels: Sequence[int] | None = None,
    positions: Sequence[float] | None = None,
    method: str = "wsp",
    sigma: float = 0.85,
    tau: float = 0.1,
    threshold: float = 0.1,
) -> float:
    """L = -(1/2N) sum_t sum_{i != t} [w(t, i) / sum_{k != t} w(t, k)] log p(t, i).

    Args:
        z1, z2: N x D nested sequences (or tensors, read element by element), the two views.
        labels: N weak labels, positions: N values of d in [0, 1] (when the method uses them).

    Returns:
        The loss as a Python float, computed in float64.
    """
    n = len(z1)
    z = [_normalise([float(x) for x in row]) for row in list(z1) + list(z2)]
    sample = [k % n for k in range(2 * n)]  # view index -> slice index
    y = None if labels is None else [int(v) for v in labels]
    d = None if positions is None else [float(v) for v in positions]
    total = 0.0
    for t in range(2 * n):
        s = [sum(a * b for a, b in zip(z[t], z[j])) / tau for j in range(2 * n)]
        others = [j for j in range(2 * n) if j != t]
        top = max(s[j] for j in others)
        log_denominator = top + math.log(sum(math.exp(s[j] - top) for j in others))
        w = {i: _weight(method, t, i, sample, y, d, sigma, threshold) for i in others}
        w_sum = sum(w.values())
        for i in others:
            if w[i] != 0.0:
                total += -(w[i] / w_sum) * (s[i] - log_denominator)
    return total / (2 * n)
