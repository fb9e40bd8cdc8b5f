"""benchmark.py: the grid, the paper-style table, plots, and the `benchmark` command with --resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsp_cirrhosis.benchmark.run import Cell, finetune_config, parse_grid, pretrain_config
from wsp_cirrhosis.benchmark.plots import plot_label_efficiency, plot_results, plot_sigma
from wsp_cirrhosis.benchmark.report import aggregate, chosen_sigmas, format_table, paired
from wsp_cirrhosis.benchmark.text import format_command
from conftest_train import make_cohort
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import BenchmarkConfig, PreprocessConfig
from wsp_cirrhosis.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n"


def _cfg(**kw) -> BenchmarkConfig:
    return BenchmarkConfig(weak=Path("w.csv"), strong=Path("s.csv"), out=Path("o"), **kw)


def _record(method, protocol, seed, aucs, encoder="tinynet", sigma=None):
    return {"method": method, "sigma": sigma, "encoder": encoder, "seed": seed, "protocol": protocol,
            "fold_auc": aucs, "fold_balanced_accuracy": [0.5] * len(aucs), "pretrain_seconds": 1.0,
            "evaluate_seconds": 1.0, "n_patients": 10, "n_positive": 4}


# ------------------------------------------------------------------ pure parts, hand-made records


def test_grid_runs_wsp_and_positional_on_one_sigma_grid_and_supcon_once():
    cells = parse_grid(_cfg(methods="none,supcon,positional,wsp", encoders="tinynet,resnet18", seeds="0,1",
                            sigmas="0.1,0.4"))
    assert len(cells) == 2 * 2 * (2 + 2 + 2)
    assert Cell("none", "resnet18", 1) in cells and Cell("supcon", "tinynet", 0) in cells
    assert Cell("positional", "tinynet", 0, 0.1) in cells and Cell("wsp", "resnet18", 1, 0.4) in cells
    assert Cell("wsp", "tinynet", 0) not in cells  # on the grid only
    assert len(set(c.run_name for c in cells if c.method != "none")) == len([c for c in cells if c.method != "none"])
    assert Cell("wsp", "tinynet", 0, 0.5).run_name == "runs/wsp-sigma0.5/tinynet/seed0"
    assert Cell("supcon", "tinynet", 0).label == "SupCon (= WSP at σ = ∞)"
    # without a grid, wsp and positional run once at the pretraining default sigma
    assert Cell("wsp", "tinynet", 0) in parse_grid(_cfg(methods="wsp", seeds="0"))


@pytest.mark.parametrize("kw,fragment", [
    ({"methods": "wsp,byol"}, "--methods"),
    ({"encoders": "vit"}, "--encoders"),
    ({"seeds": "0,a"}, "--seeds"),
    ({"sigmas": "0.5,-1"}, "--sigmas"),
    ({"methods": ""}, "--methods"),
    ({"cv_repeats": 0}, "--cv-repeats"),
    ({"bands": 0}, "--bands"),
    ({"label_sizes": "10,2"}, "--label-sizes"),
])
def test_bad_grid_settings_name_the_flag(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_grid(_cfg(**kw))


def test_table_pools_folds_over_seeds_and_bolds_the_best_per_column():
    records = [
        _record("none", "frozen", 0, [0.5, 0.6]), _record("none", "frozen", 1, [0.7, 0.6]),
        _record("wsp", "frozen", 0, [0.9, 0.8], sigma=0.1), _record("wsp", "frozen", 1, [0.9, 1.0], sigma=0.1),
        _record("none", "finetune", 0, [0.8, 0.8]), _record("wsp", "finetune", 0, [0.6, 0.7], sigma=0.1),
        _record("wsp", "frozen", 0, [0.4, 0.6], sigma=0.5), _record("supcon", "frozen", 0, [0.7, 0.7]),
    ]
    stats = aggregate(records)
    mean, std, n, n_seeds = stats[("wsp", 0.1, "tinynet", "frozen")]
    assert (mean, std, n, n_seeds) == (pytest.approx(0.9), pytest.approx(np.std([0.9, 0.8, 0.9, 1.0])), 4, 2)
    table = format_table(records).splitlines()
    assert table[0] == "| method | tinynet frozen | tinynet finetune |"
    rows = {line.split("|")[1].strip(): line for line in table[2:]}
    assert list(rows) == ["random init", "WSP, σ = 0.1", "WSP, σ = 0.5", "SupCon (= WSP at σ = ∞)"]
    assert "**0.900 ± 0.071**" in rows["WSP, σ = 0.1"] and "**0.800 ± 0.000**" in rows["random init"]
    assert "0.600 ± 0.071 |" in rows["random init"] and "**0.600" not in rows["random init"]
    assert rows["WSP, σ = 0.5"].rstrip().endswith("|  |")  # no finetune cell for that row


def _scored(method, seed, oof, labels, sigma=None, band_auc=0.5):
    r = _record(method, "frozen_bands", seed, [0.5], sigma=sigma)
    r.update(oof_probability=oof, labels=labels, monitors={"weak_band_auc": band_auc})
    return r


def test_sigma_is_chosen_on_the_weak_monitors_and_differences_are_seed_paired():
    labels = [1, 1, 0, 0]
    good, bad = [[0.9, 0.8, 0.1, 0.2]], [[0.9, 0.1, 0.2, 0.3]]  # AUC 1 and 0.5 (test_stats)
    records = [_scored("wsp", 0, bad, labels, 0.1, band_auc=0.9), _scored("wsp", 0, good, labels, 0.4, band_auc=0.6),
               _scored("supcon", 0, bad, labels), _scored("supcon", 1, good, labels)]
    # histology would favour sigma 0.4; the weak-set monitor picks 0.1
    assert chosen_sigmas(records, "tinynet") == {"wsp": 0.1}
    d = paired(records, ("wsp", 0.4), ("supcon", None), "tinynet", "frozen_bands", n_boot=200)
    assert d["seeds"] == 1 and d["difference"] == pytest.approx(0.5)  # seed 1 of supcon has no wsp partner
    assert paired(records, ("wsp", 0.4), ("pcl", None), "tinynet", "frozen_bands") is None


def test_cells_pretrain_with_the_benchmark_head_and_finetune_with_its_lr(tmp_path):
    cfg = _cfg(lr=2e-3, finetune_lr=3e-4, finetune_epochs=7, seeds="4", sigmas="0.2")
    cell = next(c for c in parse_grid(cfg) if c.method == "wsp")
    pre = pretrain_config(cfg, cell, tmp_path / "run", n_patients=50)
    assert pre.head_norm == "batch" and pre.train.lr == 2e-3 and pre.sigma == 0.2 and pre.slices_per_epoch == 50
    assert pretrain_config(_cfg(head_norm="none"), cell, tmp_path / "run").head_norm == "none"
    ft = finetune_config(cfg, 4)
    assert (ft.lr, ft.epochs, ft.seed) == (3e-4, 7, 4)


def test_command_line_lists_required_and_changed_flags_only():
    cfg = _cfg(epochs=1, sigmas="0.5,inf", resume=True, preprocess=PreprocessConfig(image_size=32))
    cmd = format_command(cfg)
    assert cmd.startswith("wsp-cirrhosis benchmark --weak w.csv --strong s.csv --out o")
    assert "--epochs 1" in cmd and "--sigmas 0.5,inf" in cmd and "--image-size 32" in cmd
    assert "--resume" not in cmd and "--folds" not in cmd and "--window-min-hu" not in cmd


def test_plots_are_pngs(tmp_path):
    records = [_record(m, p, 0, [0.6, 0.8], sigma=s) for p in ("frozen", "finetune")
               for m, s in (("wsp", 0.1), ("wsp", 0.5), ("positional", 0.1), ("supcon", None))]
    for r in records:
        r.update(folds=2, label_efficiency={"4": {"fold_auc": [0.55, 0.6], "n_train": [4, 4]}})
    plot_results(records, tmp_path / "r.png")
    plot_sigma(records, tmp_path / "s.png")
    plot_label_efficiency(records, tmp_path / "l.png")
    for name in ("r.png", "s.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


# ------------------------------------------------------------------ the command at toy size

METHODS = ["none", "simclr", "supcon", "positional", "pcl", "wsp"]
REQUIRED = {"method", "encoder", "seed", "protocol", "fold_auc", "sigma", "fold_balanced_accuracy", "pretrain_seconds"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-cohort") / "cohort"
    return make_cohort(out, patients=12, histo_patients=10, seed=1)


def _bench(cohort: Path, out: Path, *extra: str) -> int:
    return main(["benchmark", "--weak", str(cohort / "weak.csv"), "--strong", str(cohort / "histo.csv"),
                 "--out", str(out), "--methods", ",".join(METHODS), "--encoders", "tinynet", "--seeds", "0",
                 "--folds", "2", "--cv-repeats", "2", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "4",
                 "--image-size", "32", "--sigmas", "0.5", "--protocols", "frozen,frozen_bands",
                 "--label-sizes", "4", *extra])


def test_benchmark_grid_writes_results_and_resumes(cohort, tmp_path, capsys):
    # the grid with the frozen probes; fine-tuning is added below with --resume (as make reproduce does)
    out = tmp_path / "bench"
    assert _bench(cohort, out) == 0
    records = json.loads((out / "results.json").read_text())
    cells = {(r["method"], r["sigma"], r["protocol"]) for r in records}
    expected = {(m, 0.5 if m in ("wsp", "positional") else None, p) for m in METHODS
                for p in ("frozen", "frozen_bands")}
    assert cells == expected and len(records) == len(expected)
    for r in records:
        assert REQUIRED <= r.keys()
        assert len(r["fold_auc"]) == 4 and all(0 <= a <= 1 for a in r["fold_auc"])
        assert np.array(r["oof_probability"]).shape == (2, r["n_patients"]) and r["fold_seeds"] == [0, 1000]
        assert r["label_efficiency"]["4"]["n_train"] == [4] * 4
        assert "weak_band_auc" in r["monitors"]
        if r["method"] != "none":
            assert {"knn_bal_acc_first", "knn_bal_acc_last", "position_r2_last"} <= r["monitors"].keys()
    md = (out / "results.md").read_text()
    for label in ("random init", "SimCLR", "SupCon (= WSP at σ = ∞)", "positional, σ = 0.5", "PCL", "WSP, σ = 0.5"):
        assert f"| {label} |" in md
    assert md.index("## Primary endpoint") < md.index("## Patient-level AUC")
    assert "Weak/histology overlap: checked" in md and "## Did each method learn?" in md
    assert "## Paired differences" in md and "## Label efficiency" in md and "not patient data" in md
    for name in ("results.png", "sigma.png", "label_efficiency.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert (out / "runs" / "wsp-sigma0.5" / "tinynet" / "seed0" / "encoder.pt").is_file()
    capsys.readouterr()

    # an existing folder is refused without --resume / --force
    assert _bench(cohort, out) == 2
    assert "--resume" in capsys.readouterr().err

    # --resume after losing one record: only that cell runs again, reusing its pretrained encoder
    before = json.loads((out / "results.json").read_text())
    lost = next(i for i, r in enumerate(before) if r["method"] == "wsp" and r["protocol"] == "frozen")
    kept = before[:lost] + before[lost + 1:]
    (out / "results.json").write_text(json.dumps(kept))
    assert _bench(cohort, out, "--resume") == 0
    after = json.loads((out / "results.json").read_text())
    assert after[:-1] == kept
    redone = after[-1]
    assert (redone["method"], redone["sigma"], redone["protocol"]) == ("wsp", 0.5, "frozen")
    assert redone["pretrain_reused"] and redone["fold_auc"] == before[lost]["fold_auc"]

    # --resume adding fine-tuning for some methods: only the new (cell, protocol) pairs run
    assert _bench(cohort, out, "--resume", "--methods", "none,wsp", "--protocols", "finetune") == 0
    extended = json.loads((out / "results.json").read_text())
    assert extended[:-2] == after
    new = {(r["method"], r["protocol"]): r for r in extended[-2:]}
    assert set(new) == {("none", "finetune"), ("wsp", "finetune")} and new[("wsp", "finetune")]["pretrain_reused"]
    assert len(new[("wsp", "finetune")]["fold_auc"]) == 4 and 0 <= new[("wsp", "finetune")]["pooled_auc"] <= 1
    assert "| method | tinynet frozen | tinynet frozen_bands | tinynet finetune |" in (out / "results.md").read_text()
    assert {r["patient_head"] for r in extended} == {"mean", "bands"}  # frozen: pooled mean; frozen_bands: bands

    # --patient-heads adds the finetune protocol of each head (mean's finetune is already there)
    assert _bench(cohort, out, "--resume", "--methods", "none", "--protocols", "finetune",
                  "--patient-heads", "mean,attention") == 0
    heads = json.loads((out / "results.json").read_text())
    assert heads[:-1] == extended
    assert (heads[-1]["method"], heads[-1]["protocol"], heads[-1]["patient_head"]) == \
        ("none", "finetune_attention", "attention")
    assert len(heads[-1]["fold_auc"]) == 4 and "tinynet finetune_attention |" in (out / "results.md").read_text()
    assert _bench(cohort, out, "--resume", "--protocols", "frozen", "--patient-heads", "attention") == 2
    assert "needs the finetune protocol" in capsys.readouterr().err

    # --resume with different numbers-changing settings is refused
    assert _bench(cohort, out, "--resume", "--cv-repeats", "3") == 2
    assert "--cv-repeats" in capsys.readouterr().err
    assert _bench(cohort, out, "--resume", "--finetune-lr", "0.01", "--head-norm", "none") == 2
    err = capsys.readouterr().err
    assert "--finetune-lr" in err and "--head-norm" in err
