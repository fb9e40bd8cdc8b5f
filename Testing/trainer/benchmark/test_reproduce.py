"""`make reproduce` at toy size: the grid, the negative control, fine-tuning of the chosen cells, the embedding."""

import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_reproduce_script_runs_every_stage_at_toy_size(tmp_path, monkeypatch):
    default = json.loads((ROOT / "scripts" / "reproduce" / "default.json").read_text())
    toy = {
        "synth": {"patients": 12, "histo_patients": 10, "cirrhosis_fraction": 0.5, "size": 48, "seed": 1,
                  "signs": "positional"},
        # slices=0: the toy's one epoch, not the default's budget in slices seen (which wins over epochs)
        "benchmark": dict(default["benchmark"], methods="none,supcon,wsp", seeds="0", sigmas="0.2,0.5", epochs=1, slices=0,
                          batch_size=4, folds=2, cv_repeats=1, label_sizes="4", finetune_epochs=1, finetune_slices=2,
                          image_size=32, device="cpu"),
        "monitor": {"patients": 12, "seed": 2},
        "finetune": {"methods": "wsp", "seeds": "0", "patient_heads": "mean,bands"},
        "control": {"signs": "global", "methods": "none,wsp", "seeds": "0"},
    }
    config = tmp_path / "toy.json"
    config.write_text(json.dumps(toy))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["reproduce.py", "--config", str(config), "--out", str(out)])
    runpy.run_path(str(ROOT / "scripts" / "reproduce.py"), run_name="__main__")

    records = json.loads((out / "benchmark" / "results.json").read_text())
    frozen = {(r["method"], r["sigma"]) for r in records if r["protocol"] != "finetune"}
    assert frozen == {("none", None), ("supcon", None), ("wsp", 0.2), ("wsp", 0.5)}
    # the sigma is the one with the best weak-set monitor; fine-tuning and the control use it
    means = {r["sigma"]: r["monitors"]["weak_band_auc"] for r in records if r["method"] == "wsp"}
    tuned = [r for r in records if r["protocol"] == "finetune"]
    assert len(tuned) == 1 and tuned[0]["method"] == "wsp" and tuned[0]["pretrain_reused"]
    assert [r["protocol"] for r in records if r["protocol"].startswith("finetune")] == ["finetune", "finetune_bands"]
    # the monitors of the grid ran on the separate monitor cohort (ids apart from the weak set's)
    monitor = out / "cohort-monitor" / "weak.csv"
    assert monitor.read_text().splitlines()[1].startswith("mon-weak-0000,")
    assert f"monitors on the 12 patients of `{monitor}`" in (out / "benchmark" / "results.md").read_text(encoding="utf-8")
    finite = {s: v for s, v in means.items() if v is not None}
    # chosen on the monitor; the grid's first sigma when the toy's monitor is undefined
    assert means[tuned[0]["sigma"]] == max(finite.values()) if finite else tuned[0]["sigma"] == 0.2
    control = json.loads((out / "control" / "results.json").read_text())
    assert {(r["method"], r["sigma"]) for r in control} == {("none", None), ("wsp", tuned[0]["sigma"])}
    assert json.loads((out / "cohort-global" / "cohort.json").read_text())["config"]["signs"] == "global"
    for name in ("results.md", "results.png", "sigma.png", "label_efficiency.png"):
        assert (out / "benchmark" / name).stat().st_size > 0
    assert (out / "embedding.png").read_bytes()[:4] == b"\x89PNG"
    # The checked-in configurations stay valid: every key is a benchmark flag.
    from wsp_cirrhosis.cli import build_parser

    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["benchmark"]._actions}
    for name in ("default.json", "full.json"):
        cfg = json.loads((ROOT / "scripts" / "reproduce" / name).read_text())
        assert set(cfg["benchmark"]) <= flags, name
        for section in ("finetune", "control"):
            assert set(cfg.get(section, {})) - {"signs"} <= flags, (name, section)
        synth_flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["synth"]._actions}
        assert set(cfg.get("monitor", {})) <= synth_flags, name
