"""The kernel-weighted contrastive loss family: weighted InfoNCE, its five presets, the entry point.

Reference: E. Sarfati et al., "Weakly-supervised positional contrastive learning: application to
cirrhosis classification", MICCAI 2023 (arXiv 2307.04617); formula restated in method.md, "Loss".
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch
import torch.nn.functional as F

from .. import distributed
from .kernels import dirac, gaussian, window

# name -> weight function of (ids, labels, positions, p) -> (n, m) sample weights, called with
# those keywords. ids, labels, positions: pairs (anchor values (n,), candidate values (m,)), or
# None when not given; p: {"sigma": ..., "threshold": ...}.
PRESETS: dict[str, Callable[..., torch.Tensor]] = {
    "simclr": lambda ids, labels, positions, p: dirac(*ids),
    "supcon": lambda ids, labels, positions, p: dirac(*labels),
    "positional": lambda ids, labels, positions, p: gaussian(*positions, sigma=p["sigma"]),
    "pcl": lambda ids, labels, positions, p: window(*positions, threshold=p["threshold"]),
    "wsp": lambda ids, labels, positions, p: dirac(*labels) * gaussian(*positions, sigma=p["sigma"]),
}
_NEEDS = {
    "supcon": ("labels",),
    "positional": ("positions",),
    "pcl": ("positions",),
    "wsp": ("labels", "positions"),
}


def weighted_info_nce(sim: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over anchors t of ``-sum_i w_norm(t, i) log_softmax(sim)(t, i)``, w_norm = w / row sum.

    Args:
        sim: (n, m) float, anchors (rows) against candidates (columns), already divided by tau,
            with each anchor's own column set to -inf.
        weights: (n, m) float >= 0, zero on each anchor's own column and a positive sum per row;
            normalised per row here.

    Returns:
        Scalar, float32 (float64 for float64 inputs) whatever the autocast state.
    """
    dtype = torch.promote_types(sim.dtype, torch.float32)
    with torch.autocast(sim.device.type, enabled=False):
        log_prob = torch.log_softmax(sim.to(dtype), dim=-1)
        weights = weights.to(dtype)
        # Self (log_prob = -inf) and every zero-weight pair contribute exactly 0: no 0 * (-inf).
        log_prob = torch.where(weights > 0, log_prob, 0.0)
        # Dividing by the (n,) row sums rather than normalising the (n, m) weights saves a pass.
        row_sums = weights.sum(dim=-1).clamp_min(torch.finfo(dtype).tiny)
        return -((weights * log_prob).sum(dim=-1) / row_sums).mean()


def _fill_self_(matrix: torch.Tensor, n: int, m: int, rank: int, value: float) -> torch.Tensor:
    """Set each anchor's own column of the (2n, 2m) block to `value`, in place (two diagonals)."""
    matrix[:n].diagonal(rank * n).fill_(value)
    matrix[n:].diagonal(m + rank * n).fill_(value)
    return matrix


def _check(method: str, z1: torch.Tensor, z2: torch.Tensor, given: dict, tau: float) -> None:
    if method not in PRESETS:
        close = difflib.get_close_matches(str(method), PRESETS, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(PRESETS)}.{hint}")
    for name in _NEEDS.get(method, ()):
        if given[name] is None:
            raise ValueError(f"method {method!r} needs the `{name}` argument, got None.")
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both have shape (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}."
        )
    for name, value in given.items():
        if value is not None and tuple(value.shape) != (z1.shape[0],):
            raise ValueError(
                f"`{name}` must have shape ({z1.shape[0]},) to match z1; got {tuple(value.shape)}."
            )
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}.")


def contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    labels: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    method: str = "wsp",
    sigma: float = 0.85,
    tau: float = 0.1,
    threshold: float = 0.1,
) -> torch.Tensor:
    """Kernel-weighted contrastive loss over the 2N views of a batch (method.md, "Loss").

    ``L = -(1/2N) sum_t sum_{i != t} [w(t, i) / sum_{k != t} w(t, k)] log p(t, i)`` with
    ``w = K_y(y_t, y_i) K_d(d_t, d_i)`` given by ``PRESETS[method]``. Similarities and softmax run
    in float32 (float64 for float64 inputs) even under autocast.

    In a process group of K > 1 ranks, each rank passes its own N/K slices: embeddings are
    gathered with gradient, labels and positions without, and each rank computes its local
    (2N/K, 2N) block. Gradients are scaled for DDP: the local loss is the mean over local anchors,
    so DDP's average over ranks of the parameter gradients equals the single-process gradient
    (``z1.grad`` itself is therefore K times the single-process rows). The returned value is
    the single-process loss on the concatenated batch on every rank (one scalar all-reduce).
    Every rank must pass the same N.

    Args:
        z1: (N, D) float, projections of the first view; L2-normalised here.
        z2: (N, D) float, projections of the second view of the same slices, same order.
        labels: (N,) int, weak labels y; needed by "supcon" and "wsp".
        positions: (N,) float in [0, 1], slice position d, 0 = most inferior liver slice;
            needed by "positional", "pcl" and "wsp".
        method: one of "simclr", "supcon", "positional", "pcl", "wsp".
        sigma: Gaussian bandwidth on d (> 0; math.inf turns "wsp" into "supcon").
        tau: temperature (> 0).
        threshold: PCL window half-width on d (> 0).

    Returns:
        Scalar tensor (float32, or float64 for float64 inputs).

    Raises:
        ValueError: unknown method (with the valid names and the closest one), missing
            ``labels`` / ``positions``, mismatched shapes, non-positive tau / sigma / threshold.
    """
    _check(method, z1, z2, {"labels": labels, "positions": positions}, tau)
    n, rank, world = z1.shape[0], distributed.get_rank(), distributed.get_world_size()
    dtype, device = torch.promote_types(z1.dtype, torch.float32), z1.device
    with torch.autocast(device.type, enabled=False):
        z1, z2 = F.normalize(z1.to(dtype), dim=1), F.normalize(z2.to(dtype), dim=1)
        gathered = distributed.all_gather_with_grad(torch.cat([z1, z2], dim=1))  # (m, 2D): 1 call
        candidates = torch.cat(gathered.chunk(2, dim=1))  # (2m, D): all view 1, then all view 2
        anchors = torch.cat([z1, z2]) / tau  # (2n, D), tau folded in on the small side
        m = gathered.shape[0]
        ids = torch.arange(m, device=device)
        pairs = {"ids": (ids[rank * n : (rank + 1) * n], ids), "labels": None, "positions": None}
        for name, value in (("labels", labels), ("positions", positions)):
            if value is not None:  # kernels run on z's device; positions in the loss dtype
                value = value.to(device, dtype if name == "positions" else value.dtype)
                pairs[name] = (value, distributed.all_gather_no_grad(value))
        sample_w = PRESETS[method](**pairs, p={"sigma": sigma, "threshold": threshold})
        weights = _fill_self_(sample_w.to(dtype).repeat(2, 2), n, m, rank, 0.0)
        sim = _fill_self_(anchors @ candidates.T, n, m, rank, float("-inf"))
        loss = weighted_info_nce(sim, weights)
    if world > 1:  # report the global value, keep the local (DDP-scaled) gradient
        loss = loss + (distributed.mean_over_ranks(loss) - loss).detach()
    return loss
