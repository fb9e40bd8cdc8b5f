"""Patient heads on frozen encoders: mean vs bands vs attention, paired over the same folds.

    python scripts/experiments/patient_heads.py --strong COHORT/histo.csv \
        --encoders none=none,wsp=RUN_DIR,... --image-size 48 --out heads.json

Every encoder's slice features are computed once; each head is fitted on the training folds'
bags (features standardised with the training slices' mean and std) and scores the test fold.
Prints a markdown table of out-of-fold AUC per encoder and head, and the paired patient-level
bootstrap differences of each position-aware head against `mean` (the paper's read) and of each
encoder against `none` under the same head. The frozen-feature path of issue 24; end-to-end
training of the heads through the encoder is not in this script. Synthetic phantoms, not patients.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def _bags(features: list[np.ndarray], patients: list, idx: np.ndarray, mean: np.ndarray, std: np.ndarray) -> list:
    from wsp_cirrhosis.training.bags import Bag

    return [Bag(torch.from_numpy(((features[i] - mean) / std).astype(np.float32)),
                torch.from_numpy(np.asarray(patients[i].positions, np.float32))) for i in idx]


def oof_logits(features: list[np.ndarray], patients: list, labels: np.ndarray, plans: list, head_name: str,
               epochs: int, bag_size: int, bands: int, seed: int) -> np.ndarray:
    """(repeats, patients) out-of-fold patient logits of one head."""
    from wsp_cirrhosis.models.patient_heads import build_patient_head
    from wsp_cirrhosis.training.bags import fit_patient_head, patient_logits

    out = np.zeros((len(plans), len(labels)))
    for r, splits in enumerate(plans):
        for k, (train, test) in enumerate(splits):
            stacked = np.concatenate([features[i] for i in train])
            mean, std = stacked.mean(0), stacked.std(0) + 1e-6
            torch.manual_seed(seed + 100 * r + k)
            options = {"bands": bands} if head_name == "bands" else {}
            head = build_patient_head(head_name, in_dim=stacked.shape[1], **options)
            fit_patient_head(head, _bags(features, patients, train, mean, std), labels[train], epochs=epochs,
                             bag_size=bag_size, bands=bands, seed=seed + 100 * r + k)
            out[r, test] = patient_logits(head, _bags(features, patients, test, mean, std))
    return out


def main(argv: list[str] | None = None) -> None:
    from sklearn.metrics import roc_auc_score

    from wsp_cirrhosis.config import PreprocessConfig
    from wsp_cirrhosis.data.preprocess import load_cohort
    from wsp_cirrhosis.evaluation.crossval import cv_plans
    from wsp_cirrhosis.evaluation.stats import paired_auc_difference
    from wsp_cirrhosis.files import write_json_atomic
    from wsp_cirrhosis.models.features import load_pretrained_encoder, slice_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strong", type=Path, required=True, help="histology manifest")
    ap.add_argument("--encoders", required=True, help="label=run_dir pairs, comma-separated ('none' = random init)")
    ap.add_argument("--heads", default="mean,bands,attention")
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--bag-size", type=int, default=0, help="slices per bag and step (0 = all)")
    ap.add_argument("--bands", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="JSON of the out-of-fold logits and the table")
    args = ap.parse_args(argv)

    patients = load_cohort(args.strong, PreprocessConfig(image_size=args.image_size), require="histo")
    labels = np.array([int(p.histo_label) for p in patients])
    plans = cv_plans(labels, args.folds, args.repeats, args.seed)
    heads = args.heads.split(",")
    encoders = dict(pair.split("=", 1) for pair in args.encoders.split(","))
    scores: dict[str, dict[str, np.ndarray]] = {}
    aucs: dict[str, dict[str, float]] = {}
    for label, source in encoders.items():
        torch.manual_seed(args.seed)  # the random init of "none"
        _, encoder = load_pretrained_encoder(source)
        features = [slice_features(encoder, p.slices, "cpu") for p in patients]
        scores[label], aucs[label] = {}, {}
        for head in heads:
            start = time.monotonic()
            scores[label][head] = oof_logits(features, patients, labels, plans, head, args.epochs, args.bag_size,
                                             args.bands, args.seed)
            aucs[label][head] = float(np.mean([roc_auc_score(labels, row) for row in scores[label][head]]))
            print(f"{label} / {head}: pooled out-of-fold AUC {aucs[label][head]:.3f} "
                  f"({time.monotonic() - start:.0f} s)", flush=True)

    lines = ["| encoder | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    for label in encoders:
        lines.append(f"| {label} | " + " | ".join(f"{aucs[label][h]:.3f}" for h in heads) + " |")
    lines += ["", "| comparison | difference [95% CI] | p | verdict |", "| --- | --- | --- | --- |"]
    diffs = []
    for label in encoders:
        for head in heads[1:]:
            diffs.append((f"{label}: {head} − {heads[0]}", scores[label][head], scores[label][heads[0]]))
    for label in list(encoders)[1:]:
        for head in heads:
            diffs.append((f"{head}: {label} − {list(encoders)[0]}", scores[label][head], scores[list(encoders)[0]][head]))
    table = []
    for name, a, b in diffs:
        d = paired_auc_difference(labels, a, b, seed=args.seed)
        table.append({"comparison": name, **d})
        verdict = "resolved" if d["resolved"] else "not resolved"
        lines.append(f"| {name} | {d['difference']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] | {d['p_value']:.3f} | {verdict} |")
    text = "\n".join(lines)
    print(f"\n{len(labels)} histology patients ({labels.sum()} positive), {args.folds} folds x {args.repeats} repeats; "
          f"pooled out-of-fold AUC (synthetic phantom)\n\n{text}")
    write_json_atomic(args.out, {"config": {k: str(v) for k, v in vars(args).items()}, "labels": labels.tolist(),
                                 "oof_logits": {e: {h: s.tolist() for h, s in v.items()} for e, v in scores.items()},
                                 "differences": table, "table": text})


if __name__ == "__main__":
    main()
