"""Run folders: creation (config.json first), checkpoints, metrics.jsonl, exact resume.

Run folder (written by rank 0 only)::

    config.json     {"command", "config": to_dict(cfg), "software_versions", "git_revision",
                     "command_line", "created", "world_size"}; written first
    metrics.jsonl   one line per finished epoch (loop.train_loop), plus the representation
                    monitors on pretraining epochs that ran them (monitors.py)
    checkpoint.pt   written atomically after every epoch: encoder, head, optimizer, epoch, step,
                    RNG states, sampler state, metrics so far
    encoder.pt      pretrain only, at the end: {"encoder_name", "encoder_state", "method", ...}
    curves.png      pretrain only: loss and monitors against the step
    model.pt        finetune only, at the end: the format of docs/architecture.md
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import load_config
from ..distributed import barrier, get_world_size, is_rank_zero
from ..errors import InputError
from ..files import check_output_dir, save_torch_atomic, to_dict, write_json_atomic, write_text_atomic
from ..provenance import git_revision, software_versions

log = logging.getLogger("wsp_cirrhosis")
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "encoder.pt", "model.pt", "curves.png")


def resolve_resume(cfg: Any) -> Any:
    """``cfg`` for a new run; for --resume the config saved in the run folder (device kept from ``cfg``)."""
    out = Path(cfg.out)
    if not cfg.train.resume:
        return cfg
    if not (out / "config.json").is_file():
        raise InputError(f"{out}: nothing to resume (no config.json); start the run without --resume")
    saved = load_config(type(cfg), out / "config.json")
    saved = dataclasses.replace(saved, out=cfg.out, train=dataclasses.replace(
        saved.train, resume=True, force=False, device=cfg.train.device))
    ignored = _differences(to_dict(saved), to_dict(cfg))
    if ignored:
        log.warning("--resume continues with the settings in %s; ignoring %s", out / "config.json", ", ".join(ignored))
    return saved


def create_run_dir(cfg: Any, command: str) -> Path:
    """Create the run folder and write config.json first (a --resume run keeps its folder as is)."""
    out = Path(cfg.out)
    if cfg.train.resume:
        return out
    check_output_dir(out, cfg.train.force)
    barrier()  # every rank checked before rank 0 writes
    if is_rank_zero():
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        write_json_atomic(out / "config.json", {
            "command": command, "config": to_dict(cfg), "software_versions": software_versions(),
            "git_revision": git_revision(), "command_line": sys.argv,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "world_size": get_world_size(),
        })
    barrier()
    return out


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in a:
        if isinstance(a[key], dict):
            out += _differences(a[key], b.get(key, {}), prefix)
        elif key not in ("resume", "force", "device") and a[key] != b.get(key):
            out.append(f"--{(prefix + key).replace('_', '-')} {b.get(key)}")
    return out


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int,
                    sampler_state: dict, history: list[dict]) -> None:
    """Everything an exact resume needs, written atomically (``model`` has ``.encoder`` and ``.head``)."""
    save_torch_atomic({
        "encoder": model.encoder.state_dict(), "head": model.head.state_dict(),
        "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "sampler": sampler_state, "metrics": history,
    }, path)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """Restore weights, optimizer and RNG states from ``path``; returns (finished epochs, metrics so far)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model.encoder.load_state_dict(ckpt["encoder"])
    model.head.load_state_dict(ckpt["head"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    log.info("%s: resuming after epoch %d (step %d)", path.parent, int(ckpt["epoch"]), ckpt["step"])
    return int(ckpt["epoch"]), list(ckpt["metrics"])


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl: one JSON object per line (rewritten whole, atomically)."""
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))


def read_metrics(run_dir: Path) -> list[dict]:
    """The lines of ``run_dir/metrics.jsonl`` ([] when absent)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_patients(manifest: Path, preprocess: Any, cache_dir: Path | None, require: str | None) -> list:
    """load_cohort on rank 0 first (it builds the cache), then on the other ranks."""
    from ..data.preprocess import load_cohort

    patients = load_cohort(manifest, preprocess, cache_dir=cache_dir, require=require) if is_rank_zero() else None
    barrier()
    return patients if patients is not None else load_cohort(manifest, preprocess, cache_dir=cache_dir, require=require)
