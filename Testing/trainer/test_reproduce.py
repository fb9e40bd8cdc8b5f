"""`make reproduce` at toy size: the whole grid, the sigma ablation and the embedding picture."""

import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reproduce_script_runs_the_whole_grid_at_toy_size(tmp_path, monkeypatch):
    default = json.loads((ROOT / "scripts" / "reproduce" / "default.json").read_text())
    toy = {
        "synth": {"patients": 12, "histo_patients": 10, "cirrhosis_fraction": 0.3, "size": 48, "seed": 1},
        "benchmark": dict(default["benchmark"], seeds="0", sigmas="0.5,inf", epochs=1, batch_size=4, folds=2,
                          protocols="frozen,finetune", finetune_epochs=1, finetune_slices=2, image_size=32,
                          device="cpu"),
    }
    config = tmp_path / "toy.json"
    config.write_text(json.dumps(toy))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["reproduce.py", "--config", str(config), "--out", str(out)])
    runpy.run_path(str(ROOT / "scripts" / "reproduce.py"), run_name="__main__")

    records = json.loads((out / "benchmark" / "results.json").read_text())
    methods = {(r["method"], r.get("sigma")) for r in records}
    assert {m for m, s in methods if s is None} == {"none", "simclr", "supcon", "positional", "pcl", "wsp"}
    assert {s for m, s in methods if s is not None} == {0.5, "inf"}
    assert {r["protocol"] for r in records} == {"frozen", "finetune"}
    assert all(len(r["fold_auc"]) == 2 for r in records)
    for name in ("results.md", "results.png", "sigma.png"):
        assert (out / "benchmark" / name).stat().st_size > 0
    assert (out / "embedding.png").read_bytes()[:4] == b"\x89PNG"
    # The checked-in configurations stay valid: every key is a benchmark flag.
    from wsp_cirrhosis.cli import build_parser

    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["benchmark"]._actions}
    for name in ("default.json", "full.json"):
        cfg = json.loads((ROOT / "scripts" / "reproduce" / name).read_text())
        assert set(cfg["benchmark"]) <= flags, name
