"""Progress reporting: a tqdm bar with ETA on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("wsp_cirrhosis")


def is_rank_zero() -> bool:
    """True on the process that writes logs and checkpoints (rank 0, or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", every_s: float = 10.0) -> Iterator[T]:
    """Iterate with progress: a bar on a TTY, one log line every `every_s` seconds when piped.

    Silent on non-zero ranks, so a torchrun job prints one bar.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not is_rank_zero():
        yield from iterable
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or (total is not None and done == total):
            rate = done / max(now - start, 1e-9)
            eta = f", ETA {((total - done) / rate):.0f} s" if total and rate > 0 else ""
            of = f"/{total}" if total else ""
            log.info("%s %d%s (%.2f it/s%s)", desc, done, of, rate, eta)
            last = now
