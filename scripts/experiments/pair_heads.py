"""Fine-tuned patient heads side by side, paired over the same folds (benchmark --patient-heads).

    python scripts/experiments/pair_heads.py OUT/results.json [MORE/results.json ...]

Reads the finetune records of one or more `benchmark` results.json files on the same histology
cohort and folds, prints a markdown table of fold and pooled out-of-fold AUC per encoder and head,
then the paired patient-level bootstrap differences (`evaluation.stats.paired_auc_difference`) of
each position-aware head against `mean` (same encoder) and of each encoder against `none` (same
head). Synthetic phantoms, not patients, when the cohort comes from `synth`.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def fold_rank_auc(record: dict) -> float:
    """Pooled AUC of the first repeat after replacing each fold's scores by their ranks within the fold.

    Equal to the fold mean when the folds differ only in the scale of their scores; the gap to the
    plain pooled AUC is what mixing the fold models' scales costs.
    """
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    from wsp_cirrhosis.evaluation.crossval import cv_plans

    labels, scores = np.asarray(record["labels"]), np.asarray(record["oof_probability"][0], float)
    ranked = np.empty_like(scores)
    for _, test in cv_plans(labels, record["folds"], 1, record["fold_seeds"][0])[0]:
        ranked[test] = (rankdata(scores[test]) - 0.5) / len(test)
    return float(roc_auc_score(labels, ranked))


def comparisons(records: list[dict]) -> list[str]:
    """Markdown lines: the AUC table, then the paired differences."""
    from wsp_cirrhosis.evaluation.stats import paired_auc_difference

    cell = {(r["method"], r["patient_head"]): r for r in records if r["protocol"].startswith("finetune")}
    labels = np.asarray(next(iter(cell.values()))["labels"])
    lines = ["| encoder | head | fold AUC mean ± std | pooled out-of-fold AUC | pooled, ranks within folds |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {m} | {h} | {r['auc_mean']:.3f} ± {r['auc_std']:.3f} | {r['pooled_auc']:.3f} | {fold_rank_auc(r):.3f} |"
              for (m, h), r in sorted(cell.items())]
    lines += ["", "| comparison | difference [95% CI] | p | verdict |", "| --- | --- | --- | --- |"]
    pairs = [((m, h), (m, "mean")) for (m, h) in sorted(cell) if h != "mean" and (m, "mean") in cell]
    pairs += [((m, h), ("none", h)) for (m, h) in sorted(cell) if m != "none" and ("none", h) in cell]
    for a, b in pairs:
        res = paired_auc_difference(labels, np.asarray(cell[a]["oof_probability"]), np.asarray(cell[b]["oof_probability"]))
        lines.append(f"| {a[0]} {a[1]} − {b[0]} {b[1]} | {res['difference']:+.3f} [{res['lo']:+.3f}, {res['hi']:+.3f}] "
                     f"| {res['p_value']:.3f} | {'resolved' if res['resolved'] else 'not resolved'} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    paths = sys.argv[1:] if argv is None else argv
    records = [r for path in paths for r in json.loads(open(path, encoding="utf-8").read())]
    print("\n".join(comparisons(records)))


if __name__ == "__main__":
    main()
