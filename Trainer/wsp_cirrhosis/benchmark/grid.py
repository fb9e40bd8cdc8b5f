"""The cells of a benchmark: method x sigma x encoder x seed, and how a row is named.

WSP and the positional baseline share one sigma grid (`--sigmas`); SupCon is run once: it *is*
WSP at sigma = inf (no positional kernel), so it is never listed a second time as a WSP row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..config import ENCODER_NAMES, METHODS, BenchmarkConfig
from ..errors import ConfigError

BASELINE = "none"  # random init, no pretraining
SUPCON = "supcon"
SIGMA_METHODS = ("positional", "wsp")  # methods with a positional kernel of width sigma
NAMES = {"none": "random init", "simclr": "SimCLR", "supcon": "SupCon (= WSP at σ = ∞)", "pcl": "PCL",
         "positional": "positional", "wsp": "WSP"}


@dataclass(frozen=True)
class Cell:
    """One grid cell: a pretraining method (or "none") on one encoder with one seed.

    `sigma` is set on the rows of the sigma grid (wsp, positional); None = PretrainConfig's default.
    """

    method: str
    encoder: str
    seed: int
    sigma: Optional[float] = None

    @property
    def label(self) -> str:
        """Row name in the tables: the method, plus sigma on sigma-grid rows."""
        return row_label(self.method, self.sigma)

    @property
    def run_name(self) -> str:
        """Pretrain run folder, relative to OUT."""
        method = self.method if self.sigma is None else f"{self.method}-sigma{format_sigma(self.sigma)}"
        return f"runs/{method}/{self.encoder}/seed{self.seed}"

    def key(self, protocol: str) -> tuple:
        return (self.method, sigma_to_json(self.sigma), self.encoder, self.seed, protocol)


def row_label(method: str, sigma: float | None) -> str:
    """'WSP, σ = 0.1', 'SupCon (= WSP at σ = ∞)', 'random init', ..."""
    name = NAMES.get(method, method)
    return name if sigma is None else f"{name}, σ = {format_sigma(sigma)}"


def format_sigma(sigma: float) -> str:
    return "inf" if math.isinf(sigma) else f"{sigma:g}"


def sigma_to_json(sigma: float | None) -> float | str | None:
    """JSON form of sigma: inf as the string "inf" (as in files.to_dict), None stays null."""
    return None if sigma is None else ("inf" if math.isinf(sigma) else float(sigma))


def sigma_from_json(value: Any) -> float | None:
    return None if value is None else float(value)


def record_key(r: dict[str, Any]) -> tuple:
    return (r["method"], sigma_to_json(sigma_from_json(r.get("sigma"))), r["encoder"], r["seed"], r["protocol"])


def split_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    return list(dict.fromkeys(items))


def parse_label_sizes(cfg: BenchmarkConfig) -> list[int]:
    """--label-sizes as sorted positive integers.

    Raises:
        ConfigError: a size that is not an integer >= 4 (a probe needs patients of both classes).
    """
    try:
        sizes = sorted({int(s) for s in split_list(cfg.label_sizes)})
    except ValueError as exc:
        raise ConfigError(f"--label-sizes {cfg.label_sizes!r}: {exc}") from None
    if any(n < 4 for n in sizes):
        raise ConfigError(f"--label-sizes {cfg.label_sizes}: every size must be >= 4 patients")
    return sizes


def parse_grid(cfg: BenchmarkConfig) -> list[Cell]:
    """The cells of the benchmark, seed-major (a whole table per seed), wsp/positional over the sigma grid.

    Raises:
        ConfigError: an unknown method or encoder, a non-integer seed, a bad sigma, an empty list,
            --cv-repeats or --bands below 1, a bad --label-sizes.
    """
    methods = split_list(cfg.methods)
    encoders = split_list(cfg.encoders)
    valid = (BASELINE,) + METHODS
    for flag, names, allowed in (("--methods", methods, valid), ("--encoders", encoders, ENCODER_NAMES)):
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise ConfigError(f"{flag} {','.join(names) or '(empty)'}: unknown {bad}; choose from {', '.join(allowed)}")
    try:
        seeds = [int(s) for s in split_list(cfg.seeds)]
        sigmas = [float(s) for s in split_list(cfg.sigmas)]
    except ValueError as exc:
        raise ConfigError(f"--seeds {cfg.seeds!r} / --sigmas {cfg.sigmas!r}: {exc}") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed, e.g. 0,1,2")
    if any(not s > 0 for s in sigmas):
        raise ConfigError(f"--sigmas {cfg.sigmas}: every sigma must be > 0 (inf allowed)")
    for flag, value in (("--cv-repeats", cfg.cv_repeats), ("--bands", cfg.bands)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1")
    parse_label_sizes(cfg)
    cells = []
    for seed in seeds:
        for encoder in encoders:
            for m in methods:
                if m in SIGMA_METHODS and sigmas:
                    cells += [Cell(m, encoder, seed, s) for s in sigmas]
                else:
                    cells.append(Cell(m, encoder, seed))
    return cells
