"""Atomic writes, content hashes and output folders that never clobber the user's files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError

log = logging.getLogger("wsp_cirrhosis")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Readers never see a half-written file, and a crash leaves the previous version intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only (0600); give it what any new file of the user gets
        tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file, then rename: an interrupted save keeps the old checkpoint."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, or of every file in a folder (e.g. a DICOM series) in name order."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of the canonical JSON form of `obj` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def check_output_dir(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing, non-empty output folder unless `force`.

    Raises:
        InputError: `path` exists and holds files, and `force` is False.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise InputError(f"{path}: output folder already exists and is not empty; pass --force to replace it")
    return path


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))


@contextlib.contextmanager
def signals_held(what: str) -> Iterator[None]:
    """Hold SIGTERM and SIGINT while inside: a commit (renames) is never cut in half.

    A signal that arrives meanwhile is recorded, not acted on, and afterwards only logged: the
    work it would have cancelled is complete and in place, so the run ends as a success (exit 0,
    output present) rather than as a cancellation that left its output behind. The Python-level
    handlers are swapped, not the signal mask: in a process with other threads (torch's) a
    blocked main thread does not stop delivery. Only the main thread can set handlers; elsewhere
    this holds nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            log.warning("%s arrived while %s; that finished, so the run ends normally",
                        signal.Signals(signum).name, what)


@contextlib.contextmanager
def staged_output_dir(path: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Build an output folder in a hidden sibling and move it into place only on success.

    A failure or cancellation inside the block leaves no partial `path`; with `force` an
    existing `path` is replaced only after the new one is complete.
    """
    path = check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    # mkdtemp makes the folder owner-only (0700); a result folder should get the permissions
    # any folder the user creates gets, so that colleagues in the same group can read it
    stage.chmod(0o777 & ~_umask())
    try:
        yield stage
        with signals_held(f"{path} was being moved into place"):
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(stage, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(stage, path)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a (nested) config dataclass; paths become strings, inf stays 'inf'
    (``config.from_dict`` reads it back)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, float) and math.isinf(v):
            return "inf"
        return v

    return conv(cfg)
