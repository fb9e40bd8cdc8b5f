"""scripts/experiments/patient_heads.py end to end on a small synthetic cohort (a real synth subprocess)."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_patient_heads_script_scores_every_head_out_of_fold_and_pairs_them(tmp_path, monkeypatch, capsys):
    cohort = tmp_path / "cohort"
    subprocess.run([sys.executable, "-m", "wsp_cirrhosis", "synth", "--out", str(cohort), "--patients", "4",
                    "--histo-patients", "18", "--size", "48", "--signs", "positional", "--seed", "2"], check=True)
    out = tmp_path / "heads.json"
    monkeypatch.setattr(sys, "argv", ["patient_heads.py", "--strong", str(cohort / "histo.csv"), "--encoders",
                                      "none=none", "--folds", "3", "--repeats", "2", "--epochs", "2", "--image-size",
                                      "32", "--out", str(out)])
    runpy.run_path(str(ROOT / "scripts" / "experiments" / "patient_heads.py"), run_name="__main__")
    result = json.loads(out.read_text())
    logits = result["oof_logits"]["none"]
    assert set(logits) == {"mean", "bands", "attention"}
    for rows in logits.values():  # every patient scored once per repeat, by a model that did not see it
        assert len(rows) == 2 and all(len(r) == 18 for r in rows) and all(v != 0.0 for r in rows for v in r)
    names = [d["comparison"] for d in result["differences"]]
    assert names == ["none: bands − mean", "none: attention − mean"]
    assert all(d["lo"] <= d["difference"] <= d["hi"] for d in result["differences"])
    assert "| none |" in capsys.readouterr().out


def test_pair_heads_script_pairs_each_head_with_mean_over_the_same_patients(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = (np.arange(60) % 2).tolist()
    base = {"method": "none", "labels": labels, "auc_mean": 0.5, "auc_std": 0.1, "pooled_auc": 0.5, "folds": 3,
            "fold_seeds": [0]}
    records = [dict(base, protocol="finetune", patient_head="mean", oof_probability=[rng.random(60).tolist()]),
               dict(base, protocol="finetune_bands", patient_head="bands",
                    oof_probability=[(np.asarray(labels) * 0.6 + 0.4 * rng.random(60)).tolist()])]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(records))
    script = runpy.run_path(str(Path(__file__).parents[3] / "scripts" / "experiments" / "pair_heads.py"))
    script["main"]([str(path)])
    out = capsys.readouterr().out
    assert "| none | bands | 0.500 ± 0.100 | 0.500 |" in out  # the records' own figures, then the rank column
    line = next(x for x in out.splitlines() if x.startswith("| none bands − none mean |"))
    assert "| resolved |" in line  # labels drive the bands scores: a clear, resolved gain


def test_fold_rank_auc_removes_what_mixing_fold_scales_costs():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from wsp_cirrhosis.evaluation.crossval import cv_plans

    script = runpy.run_path(str(Path(__file__).parents[3] / "scripts" / "experiments" / "pair_heads.py"))
    rng = np.random.default_rng(1)
    labels = np.arange(90) % 2
    scores = labels * 1.0 + rng.normal(0, 1.0, 90)
    plan = cv_plans(labels, 3, 1, 0)[0]
    for k, (_, test) in enumerate(plan):  # each fold model on its own scale: shifted by 3 per fold
        scores[test] += 3 * k
    fold_mean = np.mean([roc_auc_score(labels[t], scores[t]) for _, t in plan])
    record = {"labels": labels.tolist(), "oof_probability": [scores.tolist()], "folds": 3, "fold_seeds": [0]}
    ranked = script["fold_rank_auc"](record)
    assert roc_auc_score(labels, scores) < fold_mean - 0.1  # pooling mixes the scales
    assert abs(ranked - fold_mean) < 0.03
