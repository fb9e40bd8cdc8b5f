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

    Epochs E = ceil(slices / slices per epoch) (the monitors' cadence stays about the same), and the
    epoch is trimmed to ceil(slices / (E x batch size)) whole batches: the run draws at most E
    batches more than the budget, whatever the batch size.
    """
    if not cfg.slices:
        return cfg
    epochs = max(1, -(-cfg.slices // cfg.slices_per_epoch))
    batch = cfg.train.batch_size
    per_epoch = -(-cfg.slices // (epochs * batch)) * batch
    return dataclasses.replace(cfg, slices_per_epoch=per_epoch, train=dataclasses.replace(cfg.train, epochs=epochs))


def slices_seen(cfg: PretrainConfig) -> int:
    """Slices a pretraining run with these settings draws in all (epochs x steps per epoch x batch size)."""
    steps = -(-cfg.slices_per_epoch // cfg.train.batch_size)
    return cfg.train.epochs * steps * cfg.train.batch_size
