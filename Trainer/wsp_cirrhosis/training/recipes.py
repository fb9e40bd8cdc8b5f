"""Pretraining schedules: the paper's recipe and the budget in slices seen (docs/training.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import PretrainConfig

# --recipe paper: the paper's settings (method.md, "Batches, augmentations, models"); the
# augmentations of each recipe are augment.AUGMENTS[recipe].
PAPER_RECIPE: dict[str, Any] = {"lr": 1e-5, "weight_decay": 1e-5, "epochs": 40, "batch_size": 64,
                                "slices_per_epoch": 10000, "head_norm": "none", "sigma": 0.85, "position_groups": 0}


def apply_recipe(cfg: PretrainConfig) -> tuple[PretrainConfig, list[str]]:
    """``cfg`` with its recipe's settings; also the flags the recipe overrode (``--lr 0.001 -> 1e-05``).

    The default recipe keeps the flags as given.
    """
    if cfg.recipe != "paper":
        return cfg, []
    train_keys = ("lr", "weight_decay", "epochs", "batch_size")
    current = {**{k: getattr(cfg.train, k) for k in train_keys},
               **{k: getattr(cfg, k) for k in PAPER_RECIPE if k not in train_keys}}
    changed = [f"--{k.replace('_', '-')} {current[k]} -> {v}" for k, v in PAPER_RECIPE.items() if current[k] != v]
    train = dataclasses.replace(cfg.train, **{k: PAPER_RECIPE[k] for k in train_keys})
    rest = {k: v for k, v in PAPER_RECIPE.items() if k not in train_keys}
    return dataclasses.replace(cfg, train=train, **rest), changed


def apply_budget(cfg: PretrainConfig) -> PretrainConfig:
    """``cfg`` with its schedule set from ``--slices``; unchanged when 0.

    The budget is B = ceil(slices / batch size) steps, spread over E epochs of ceil(B / E) steps.
    E is ceil(slices / slices per epoch) (the epoch keeps its length in slices) or ceil(B / S)
    (it keeps its length in steps, S = ceil(slices per epoch / batch size)), whichever draws fewer
    slices: the run draws fewer than E batches more than the budget, whatever the batch size.
    With 200 patients per epoch at batch 32 a 24,000-slice budget is 108 epochs of 7 steps (24,192
    slices) rather than 120 (26,880).
    """
    if not cfg.slices:
        return cfg
    batch = cfg.train.batch_size
    budget = -(-cfg.slices // batch)
    candidates = {max(1, -(-cfg.slices // cfg.slices_per_epoch)), max(1, -(-budget // -(-cfg.slices_per_epoch // batch)))}
    epochs = min(sorted(candidates), key=lambda e: e * -(-budget // e))
    per_epoch = -(-budget // epochs) * batch
    return dataclasses.replace(cfg, slices_per_epoch=per_epoch, train=dataclasses.replace(cfg.train, epochs=epochs))


def slices_seen(cfg: PretrainConfig) -> int:
    """Slices a pretraining run with these settings draws in all (epochs x steps per epoch x batch size)."""
    steps = -(-cfg.slices_per_epoch // cfg.train.batch_size)
    return cfg.train.epochs * steps * cfg.train.batch_size
