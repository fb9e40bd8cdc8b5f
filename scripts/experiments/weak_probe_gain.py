"""Does pretraining raise the weak band-probe above its random init? A paired test on a monitor set.

    python scripts/experiments/weak_probe_gain.py RUN... --manifest MONITOR.csv [--against RUN...]
        [--cache-dir DIR] [--out gain.json]

For each pretrain run, the weak band-probe of the pretraining monitors (`training.monitors`: the
weak reading "cirrhosis" from band-pooled features of 12 evenly spaced slices per patient, a
logistic probe with fixed 5-fold cross-validation) is scored on every patient of MONITOR.csv with
the run's final encoder and with the comparator: by default the run's own random init (its seed),
or the encoder of the matching run of ``--against`` (same order: e.g. SupCon runs of the same
seeds). The difference of AUCs comes with a patient-level paired bootstrap 95% CI
(`evaluation.stats.paired_auc_difference`), per run and pooled over the runs (the mean over runs,
the same patients resampled for every run). MONITOR.csv must be patients no run trained on: a
separate weak-labelled cohort (`pretrain --monitor-manifest`), large enough to resolve a gain that
60 held-out patients cannot (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wsp_cirrhosis.config import PreprocessConfig
from wsp_cirrhosis.data.preprocess import load_cohort
from wsp_cirrhosis.evaluation.evaluate import _load_encoder
from wsp_cirrhosis.evaluation.stats import paired_auc_difference
from wsp_cirrhosis.files import write_json_atomic
from wsp_cirrhosis.training.monitors import MonitorSet, _forward, weak_band_scores
from wsp_cirrhosis.training.pretrain import HELD_OUT_SLICES


def run_config(run: Path) -> dict:
    """The pretrain settings of a run folder (config.json)."""
    return json.loads((run / "config.json").read_text())["config"]


def probe_scores(source: str | Path, arch: str, seed: int, held_out: MonitorSet) -> tuple[np.ndarray, np.ndarray]:
    """(labels, out-of-fold scores) of the weak band-probe for an encoder ("none" = the seed's random init)."""
    _, encoder = _load_encoder(source, arch, seed)
    encoder.eval()
    scored = weak_band_scores(_forward(encoder, held_out.images, "cpu"), held_out)
    if scored is None:
        raise SystemExit("the monitor set needs at least 2 patients of each weak class (cirrhosis vs the rest)")
    return scored


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--manifest", type=Path, required=True, help="weak-labelled patients no run trained on")
    ap.add_argument("--against", nargs="*", type=Path, default=[], help="comparator runs (default: each run's init)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.against and len(args.against) != len(args.runs):
        raise SystemExit(f"--against names {len(args.against)} runs for {len(args.runs)} runs")
    sets: dict[tuple, MonitorSet] = {}
    rows, a_rows, b_rows, labels = [], [], [], None
    for i, run in enumerate(args.runs):
        cfg = run_config(run)
        pre = PreprocessConfig(**cfg["preprocess"])
        key = tuple(sorted(cfg["preprocess"].items()))
        if key not in sets:  # runs of one preprocessing share the loaded monitor slices
            sets[key] = MonitorSet.from_patients(load_cohort(args.manifest, pre, cache_dir=args.cache_dir,
                                                             require="weak"), HELD_OUT_SLICES)
        held = sets[key]
        y, a = probe_scores(run, cfg["encoder"], int(cfg["train"]["seed"]), held)
        other = args.against[i] if args.against else "none"
        _, b = probe_scores(other, cfg["encoder"], int(cfg["train"]["seed"]), held)
        if labels is not None and not np.array_equal(labels, y):
            raise SystemExit("runs with different preprocessing see different monitor patients; pool them separately")
        labels = y
        res = paired_auc_difference(y, a, b, args.n_boot, seed=0)
        rows.append({"run": str(run), "against": str(other) if args.against else f"random init (seed "
                     f"{cfg['train']['seed']})", **res})
        a_rows.append(a)
        b_rows.append(b)
    pooled = paired_auc_difference(labels, np.stack(a_rows), np.stack(b_rows), args.n_boot, seed=0)
    print(f"weak band-probe on {len(labels)} monitor patients ({int(labels.sum())} read as cirrhosis), "
          f"{args.manifest}")
    print("| run | against | AUC run | AUC against | difference [95% CI] |")
    print("| --- | --- | ---: | ---: | --- |")
    for r in rows + [{"run": f"mean of {len(rows)} runs", "against": "", **pooled}]:
        verdict = "resolved" if r["resolved"] else "not resolved"
        print(f"| {r['run']} | {r['against']} | {r['auc_a']:.3f} | {r['auc_b']:.3f} | {r['difference']:+.3f} "
              f"[{r['lo']:+.3f}, {r['hi']:+.3f}] {verdict} |")
    if args.out:
        write_json_atomic(args.out, {"manifest": str(args.manifest), "patients": int(len(labels)),
                                     "runs": rows, "pooled": pooled})


if __name__ == "__main__":
    main()
