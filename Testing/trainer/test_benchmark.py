"""benchmark.py: the grid, the paper-style table, plots, and the `benchmark` command with --resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from wsp_cirrhosis.benchmark import Cell, aggregate, format_command, format_table, parse_grid, plot_results, plot_sigma
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


def test_grid_is_methods_x_encoders_x_seeds_plus_sigma_rows():
    cells = parse_grid(_cfg(methods="none,wsp", encoders="tinynet,resnet18", seeds="0,1", sigmas="0.5,inf"))
    assert len(cells) == 2 * 2 * (2 + 2)
    assert Cell("none", "resnet18", 1) in cells
    assert Cell("wsp", "tinynet", 0, math.inf) in cells
    assert len(set(c.run_name for c in cells if c.method != "none")) == len([c for c in cells if c.method != "none"])
    assert Cell("wsp", "tinynet", 0, 0.5).run_name == "runs/wsp-sigma0.5/tinynet/seed0"


@pytest.mark.parametrize("kw,fragment", [
    ({"methods": "wsp,byol"}, "--methods"),
    ({"encoders": "vit"}, "--encoders"),
    ({"seeds": "0,a"}, "--seeds"),
    ({"sigmas": "0.5,-1"}, "--sigmas"),
    ({"methods": ""}, "--methods"),
])
def test_bad_grid_settings_name_the_flag(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_grid(_cfg(**kw))


def test_table_pools_folds_over_seeds_and_bolds_the_best_per_column():
    records = [
        _record("none", "frozen", 0, [0.5, 0.6]), _record("none", "frozen", 1, [0.7, 0.6]),
        _record("wsp", "frozen", 0, [0.9, 0.8]), _record("wsp", "frozen", 1, [0.9, 1.0]),
        _record("none", "finetune", 0, [0.8, 0.8]), _record("wsp", "finetune", 0, [0.6, 0.7]),
        _record("wsp", "frozen", 0, [0.4, 0.6], sigma=0.5), _record("wsp", "frozen", 0, [0.7, 0.7], sigma="inf"),
    ]
    stats = aggregate(records)
    mean, std, n, n_seeds = stats[("wsp", None, "tinynet", "frozen")]
    assert (mean, std, n, n_seeds) == (pytest.approx(0.9), pytest.approx(np.std([0.9, 0.8, 0.9, 1.0])), 4, 2)
    table = format_table(records).splitlines()
    assert table[0] == "| method | tinynet frozen | tinynet finetune |"
    rows = {line.split("|")[1].strip(): line for line in table[2:]}
    assert list(rows) == ["none (random init)", "wsp", "wsp, σ = 0.5", "wsp, σ = inf"]
    assert "**0.900 ± 0.071**" in rows["wsp"] and "**0.800 ± 0.000**" in rows["none (random init)"]
    assert "0.600 ± 0.071 |" in rows["none (random init)"] and "**0.600" not in rows["none (random init)"]
    assert rows["wsp, σ = 0.5"].rstrip().endswith("|  |")  # no finetune cell for that row


def test_command_line_lists_required_and_changed_flags_only():
    cfg = _cfg(epochs=1, sigmas="0.5,inf", resume=True, preprocess=PreprocessConfig(image_size=32))
    cmd = format_command(cfg)
    assert cmd.startswith("wsp-cirrhosis benchmark --weak w.csv --strong s.csv --out o")
    assert "--epochs 1" in cmd and "--sigmas 0.5,inf" in cmd and "--image-size 32" in cmd
    assert "--resume" not in cmd and "--folds" not in cmd and "--window-min-hu" not in cmd


def test_plots_are_pngs(tmp_path):
    records = [_record("wsp", p, 0, [0.6, 0.8], sigma=s)
               for p in ("frozen", "finetune") for s in (None, 0.1, 0.5, "inf")]
    plot_results(records, tmp_path / "r.png")
    plot_sigma(records, tmp_path / "s.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG and (tmp_path / "s.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------ the command at toy size

METHODS = ["none", "simclr", "supcon", "positional", "pcl", "wsp"]
REQUIRED = {"method", "encoder", "seed", "protocol", "fold_auc", "sigma", "fold_balanced_accuracy", "pretrain_seconds"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-cohort") / "cohort"
    return make_cohort(out, patients=6, histo_patients=6, seed=1)


def _bench(cohort: Path, out: Path, *extra: str) -> int:
    return main(["benchmark", "--weak", str(cohort / "weak.csv"), "--strong", str(cohort / "histo.csv"),
                 "--out", str(out), "--methods", ",".join(METHODS), "--encoders", "tinynet", "--seeds", "0",
                 "--folds", "2", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "6",
                 "--image-size", "32", "--sigmas", "0.5,inf", "--protocols", "frozen", *extra])


def test_benchmark_grid_writes_results_and_resumes(cohort, tmp_path, capsys):
    # the whole grid with the frozen protocol (fine-tuning 16 folds would triple the time);
    # fine-tuning inside the benchmark is exercised below by extending the grid with --resume
    out = tmp_path / "bench"
    assert _bench(cohort, out) == 0
    records = json.loads((out / "results.json").read_text())
    cells = {(r["method"], r["sigma"], r["protocol"]) for r in records}
    expected = {(m, None, "frozen") for m in METHODS} | {("wsp", s, "frozen") for s in (0.5, "inf")}
    assert cells == expected and len(records) == len(expected)
    for r in records:
        assert REQUIRED <= r.keys()
        assert len(r["fold_auc"]) == 2 and all(0 <= a <= 1 for a in r["fold_auc"])
    md = (out / "results.md").read_text()
    rows = ["none (random init)", "simclr", "supcon", "positional", "pcl", "wsp", "wsp, σ = 0.5", "wsp, σ = inf"]
    for label in rows:
        assert f"| {label} |" in md
    assert "not patient data" in md and "wsp-cirrhosis benchmark --weak" in md and "Machine:" in md
    assert (out / "results.png").read_bytes()[:8] == PNG and (out / "sigma.png").read_bytes()[:8] == PNG
    assert (out / "runs" / "wsp-sigma0.5" / "tinynet" / "seed0" / "encoder.pt").is_file()
    capsys.readouterr()

    # an existing folder is refused without --resume / --force
    assert _bench(cohort, out) == 2
    assert "--resume" in capsys.readouterr().err

    # --resume: a finished grid recomputes nothing
    before = json.loads((out / "results.json").read_text())
    assert _bench(cohort, out, "--resume") == 0
    assert json.loads((out / "results.json").read_text()) == before

    # --resume after losing one record: only that cell runs again, reusing its pretrained encoder
    lost = next(i for i, r in enumerate(before) if r["sigma"] == 0.5)
    kept = before[:lost] + before[lost + 1:]
    (out / "results.json").write_text(json.dumps(kept))
    assert _bench(cohort, out, "--resume") == 0
    after = json.loads((out / "results.json").read_text())
    assert after[:-1] == kept
    redone = after[-1]
    assert (redone["method"], redone["sigma"], redone["protocol"]) == ("wsp", 0.5, "frozen")
    assert redone["pretrain_reused"] and redone["fold_auc"] == before[lost]["fold_auc"]

    # --resume adding a protocol: only the new (cell, protocol) runs, fine-tuning the saved wsp encoder
    assert _bench(cohort, out, "--resume", "--methods", "wsp", "--sigmas", "", "--protocols", "frozen,finetune") == 0
    extended = json.loads((out / "results.json").read_text())
    assert extended[:-1] == after
    new = extended[-1]
    assert (new["method"], new["sigma"], new["protocol"], new["pretrain_reused"]) == ("wsp", None, "finetune", True)
    assert len(new["fold_auc"]) == 2
    table = (out / "results.md").read_text()
    assert "| method | tinynet frozen | tinynet finetune |" in table and "| simclr |" in table

    # --resume with different numbers-changing settings is refused
    assert _bench(cohort, out, "--resume", "--folds", "3") == 2
    assert "--folds" in capsys.readouterr().err
