"""Process-group plumbing: torchrun init, rank helpers and an autograd-aware all-gather.

One code path serves one process and many: every helper degrades to the single-process answer
when ``torch.distributed`` is not initialised, so callers never branch on the mode.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank of this process (0 in a single process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the group (1 in a single process)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank_zero() -> bool:
    """True on the process that writes files and prints."""
    return get_rank() == 0


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when PyTorch sees a GPU, else CPU; a named device is checked.

    Raises:
        ConfigError: CUDA requested but not available, or an unknown device name.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: not a torch device; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here (PyTorch sees no GPU); use --device cpu or auto")
    return dev


def init_distributed(device: str = "auto") -> torch.device:
    """Join the process group described by torchrun's environment, if any.

    With ``RANK`` and ``WORLD_SIZE`` in the environment (torchrun, or a test that sets them with
    ``MASTER_ADDR`` / ``MASTER_PORT``), initialises ``torch.distributed`` with NCCL for CUDA and
    gloo otherwise, and pins each process to GPU ``LOCAL_RANK``. Without them it does nothing.

    Args:
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:<index>".

    Returns:
        The device this process must put its model and batches on.
    """
    resolved = resolve_device(device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return resolved
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    return resolved


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Return rank 0's ``obj`` on every rank (any picklable object, e.g. a run folder name)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands every rank the summed gradient of its own shard.

    Each rank's loss depends on every shard through the gathered columns, so the gradient of
    the sum of the ranks' losses w.r.t. the local shard is the all-reduced (summed) gradient,
    sliced at this rank's rows.
    """

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        ctx.rows = t.shape[0]
        return _gather(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, with gradients flowing back to the local shard.

    Args:
        t: (n, ...) tensor; every rank must pass the same shape.

    Returns:
        (world_size * n, ...) tensor, rank r's shard at rows ``[r * n, (r + 1) * n)``;
        ``t`` itself in a single process.
    """
    return _AllGatherWithGrad.apply(t) if is_distributed() else t


def all_gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, detached (labels, positions, ids).

    Args:
        t: (n, ...) tensor; every rank must pass the same shape.

    Returns:
        (world_size * n, ...) tensor; ``t`` itself in a single process.
    """
    if not is_distributed():
        return t
    with torch.no_grad():
        return _gather(t.detach())


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over ranks, detached (a logged value, never a gradient path).

    Args:
        t: tensor of any shape, same shape on every rank.

    Returns:
        Tensor of ``t``'s shape holding the mean over ranks; ``t.detach()`` in a single process.
    """
    if not is_distributed():
        return t.detach()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
