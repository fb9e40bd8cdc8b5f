"""Progress reporting: a tqdm bar with ETA on a terminal, periodic log lines otherwise, and the
JSON-lines protocol (`--progress jsonl`) through which other programs follow a long command."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

from .config import PROGRESS_MODES  # noqa: F401  (re-exported: the modes of progress_callback)

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


# --- the JSON-lines protocol of long commands (`predict --progress jsonl`) -----------------------

PROTOCOL_VERSION = 1  # raised when an event loses or changes a field (new fields keep it)


def emit_event(event: str, stream: TextIO | None = None, **fields: Any) -> None:
    """Write one protocol line, {"event": event, **fields}, to stdout (or `stream`) and flush it.

    One JSON object per line, nothing else on that stream: another program (the Slicer module)
    reads the lines as they come. Logs stay on stderr. README "JSON-lines progress" lists the events.
    """
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps({"event": event, **fields}, allow_nan=False, default=str) + "\n")
    out.flush()


def progress_callback(mode: str, stage_of: Callable[[str], str] = lambda message: "") -> Callable[[float, str], None]:
    """A progress(fraction, message) callback for `mode` (one of PROGRESS_MODES).

    jsonl: a "progress" event per call (fraction, stage from `stage_of(message)`, message);
    bar: a tqdm bar on stderr; log: a log line per stage and at most one per 5 s within a stage;
    none: silent; auto: bar on a terminal, log otherwise.
    """
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    if mode == "jsonl":
        return lambda fraction, message: emit_event(
            "progress", fraction=round(float(fraction), 4), stage=stage_of(message), message=message)
    if mode == "none":
        return lambda fraction, message: None
    if mode == "bar":
        return _bar_callback()
    return _log_callback(stage_of)


def _bar_callback() -> Callable[[float, str], None]:
    from tqdm import tqdm

    steps = 1000
    bar = tqdm(total=steps, desc="predict", dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def report(fraction: float, message: str) -> None:
        if bar.disable:  # closed at 100%: later stages (writing the files) are logged instead
            log.info("%s", message)
            return
        bar.update(max(0, round(fraction * steps) - bar.n))
        bar.set_postfix_str(message, refresh=True)
        if fraction >= 1.0:
            bar.close()

    return report


def _log_callback(stage_of: Callable[[str], str], every_s: float = 5.0) -> Callable[[float, str], None]:
    last = {"stage": None, "time": 0.0}

    def report(fraction: float, message: str) -> None:
        now, stage = time.monotonic(), stage_of(message)
        if stage != last["stage"] or now - last["time"] >= every_s or fraction >= 1.0:
            log.info("%3.0f%% %s", 100 * fraction, message)
            last.update(stage=stage, time=now)

    return report
