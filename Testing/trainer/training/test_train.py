"""train.py / pretrain.py / finetune.py: run folders, every method, finetune variants, exact resume,
gradient caching (with the BatchNorm head), recipes, bad arguments."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import wsp_cirrhosis.training.pretrain as pretrain_mod
import wsp_cirrhosis.training.loop as train
from conftest_train import fake_patients, rewrite_manifest, run_states, shared_cohort
from wsp_cirrhosis.training.augment import AUGMENTS, PAPER_AUGMENT
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import METHODS, PretrainConfig, TrainConfig
from wsp_cirrhosis.training.recipes import apply_recipe
from wsp_cirrhosis.models.features import (
    load_pretrained_encoder,
    patient_probabilities,
    pooled_features,
    slice_probabilities,
)
from wsp_cirrhosis.training.finetune import fit_classifier
from wsp_cirrhosis.models.heads import ProjectionHead, Projector, SliceClassifier
from wsp_cirrhosis.models.encoders import TinyNet

SMALL = ["--image-size", "16", "--device", "cpu"]
NO_MONITOR = ["--monitor-fraction", "0"]
METRIC_KEYS = {"epoch", "step", "loss", "lr", "time_s", "slices_per_s", "data_wait_fraction"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return shared_cohort(tmp_path_factory)


@pytest.fixture(scope="module")
def pretrained(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", "--manifest", str(cohort / "weak.csv"), "--out", str(out), "--epochs", "1",
                 "--batch-size", "8", "--slices-per-epoch", "8", "--lr", "1e-3", *NO_MONITOR, *SMALL]) == 0
    return out


def _pretrain_cfg(out: Path, **train_kw) -> PretrainConfig:
    kw = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "device": "cpu", **train_kw}
    return PretrainConfig(manifest=Path("fake.csv"), out=out, train=TrainConfig(**kw), slices_per_epoch=8,
                          monitor_fraction=0.0)


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero():
    lrs = [train.lr_at(s, 100, 1.0) for s in range(100)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # 5% warm-up
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[52] == pytest.approx(0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert 0 < lrs[-1] < 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_pretrain_one_epoch_writes_the_run_folder(method, tmp_path):
    cfg = PretrainConfig(manifest=Path("fake.csv"), out=tmp_path / "run", method=method, slices_per_epoch=8,
                         monitor_fraction=0.0, train=TrainConfig(epochs=1, batch_size=8, device="cpu"))
    run = pretrain_mod.pretrain(cfg, fake_patients(8, size=16))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "encoder.pt", "metrics.jsonl"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["command"] == "pretrain" and saved["config"]["method"] == method
    assert {"software_versions", "git_revision", "command_line", "created"} <= saved.keys()
    (line,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert METRIC_KEYS <= line.keys() and line["epoch"] == 1 and line["step"] == 1 and math.isfinite(line["loss"])
    name, encoder = load_pretrained_encoder(run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert name == "tinynet" and all(torch.equal(v, ckpt["encoder"][k]) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_gradient_caching_gives_the_unchunked_gradients(norm):
    torch.manual_seed(0)
    net = Projector(TinyNet(), ProjectionHead(norm=norm))
    patients = fake_patients(6, size=16)
    batch = {"images": torch.from_numpy(np.stack([p.slices[0] for p in patients]))[:, None],
             "labels": torch.tensor([p.weak_label for p in patients]), "positions": torch.rand(6)}
    kw = {"method": "wsp", "sigma": 0.5, "tau": 0.1, "threshold": 0.1}
    grads, losses = [], []
    for chunks in (1, 3):
        net.zero_grad()
        losses.append(train.contrastive_step(net, batch, torch.Generator().manual_seed(1), loss_kwargs=kw, chunks=chunks))
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    for loss, grad in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(loss, losses[0], rtol=1e-6, atol=1e-6)
        # TinyNet's initial gradients are small (~1e-4): compare relative to their scale
        scale = grads[0].abs().max()
        assert scale > 0 and ((grad - grads[0]).abs().max() / scale) < 1e-5


def test_bf16_step_runs_and_gives_a_finite_loss(tmp_path):
    run = pretrain_mod.pretrain(_pretrain_cfg(tmp_path / "run", bf16=True, accumulate=2), fake_patients(8, size=16))
    assert math.isfinite(json.loads((run / "metrics.jsonl").read_text())["loss"])


def test_same_seed_same_weights_and_resume_after_interrupt_is_exact(cohort, tmp_path, monkeypatch, capsys):
    # 3 of the 8 patients held out for the monitors: resume must reproduce them too
    args = ["pretrain", "--manifest", str(cohort / "weak.csv"), "--epochs", "2", "--batch-size", "4",
            "--slices-per-epoch", "8", "--lr", "1e-3", "--seed", "3", *SMALL]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    calls = {"n": 0}
    step = pretrain_mod.contrastive_step

    def crashing_step(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, step 2: after the first checkpoint
            raise KeyboardInterrupt
        return step(*a, **kw)

    monkeypatch.setattr(pretrain_mod, "contrastive_step", crashing_step)
    assert main([*args, "--out", str(tmp_path / "b")]) == 130
    assert "--resume" in capsys.readouterr().err
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "b" / "encoder.pt").exists()
    monkeypatch.setattr(pretrain_mod, "contrastive_step", step)
    assert main(["pretrain", "--manifest", str(cohort / "weak.csv"), "--out", str(tmp_path / "b"), "--resume"]) == 0

    a, b = run_states(tmp_path / "a"), run_states(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keep = ("epoch", "step", "loss", "lr", "loss_excess", "knn_bal_acc", "position_r2", "alignment", "uniformity")
    strip = lambda run: [{k: v for k, v in json.loads(x).items() if k in keep}  # noqa: E731
                         for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "a") == strip(tmp_path / "b") and len(strip(tmp_path / "a")) == 3  # step 0 + 2 epochs
    assert "knn_bal_acc" in strip(tmp_path / "a")[0] and (tmp_path / "b" / "curves.png").is_file()
    assert torch.equal(torch.load(tmp_path / "a" / "encoder.pt", weights_only=True)["encoder_state"]["features.0.weight"],
                       torch.load(tmp_path / "b" / "encoder.pt", weights_only=True)["encoder_state"]["features.0.weight"])


def _finetune(cohort: Path, out: Path, *extra: str) -> dict:
    assert main(["finetune", "--manifest", str(cohort / "histo.csv"), "--out", str(out), "--epochs", "1",
                 "--batch-size", "16", "--slices-per-patient", "4", "--lr", "1e-3", *SMALL, *extra]) == 0
    return torch.load(out / "model.pt", weights_only=True)


def test_finetune_from_a_pretrain_run_writes_model_pt(cohort, pretrained, tmp_path):
    model = _finetune(cohort, tmp_path / "ft", "--init", str(pretrained))
    assert model["encoder_name"] == "tinynet" and model["class_names"] == ["no cirrhosis", "cirrhosis"]
    assert 0.0 <= model["threshold"] <= 1.0 and model["preprocess"]["image_size"] == 16
    assert model["training_summary"]["n_patients"] == 6 and model["training_summary"]["init"] == str(pretrained)
    assert {"train_auc", "train_sensitivity", "train_specificity", "final_loss"} <= model["metrics"].keys()
    init = torch.load(pretrained / "encoder.pt", weights_only=True)["encoder_state"]
    assert not torch.equal(init["features.0.weight"], model["encoder_state"]["features.0.weight"])


def test_finetune_freeze_trains_the_head_only(cohort, pretrained, tmp_path):
    model = _finetune(cohort, tmp_path / "ft", "--init", str(pretrained), "--freeze")
    init = torch.load(pretrained / "encoder.pt", weights_only=True)["encoder_state"]
    assert all(torch.equal(v, model["encoder_state"][k]) for k, v in init.items())
    assert model["training_summary"]["freeze"] is True


def test_finetune_from_scratch_starts_from_a_random_encoder(cohort, tmp_path):
    model = _finetune(cohort, tmp_path / "ft")
    assert model["training_summary"]["init"] == "none" and model["encoder_name"] == "tinynet"


def test_fit_classifier_and_probabilities_on_hand_made_patients():
    patients = fake_patients(6, size=16, slices=(3, 5))
    model = fit_classifier(TinyNet(), patients, TrainConfig(epochs=1, batch_size=8, device="cpu"), seed=1)
    assert isinstance(model, SliceClassifier) and not model.training
    probs = patient_probabilities(model, patients, "cpu", batch_size=4)
    slices = slice_probabilities(model, patients[0].slices, "cpu", batch_size=2)
    assert probs.shape == (6,) and slices.shape == (len(patients[0].slices),)
    assert probs[0] == pytest.approx(slices.mean()) and ((probs > 0) & (probs < 1)).all()
    features = pooled_features(model.encoder, patients, "cpu", batch_size=4)
    assert features.shape == (6, 512) and np.isfinite(features).all()


# ------------------------------------------------------------------ bad arguments: exit 2, one clear line


def _bad_cases(cohort: Path, tmp: Path, pretrained: Path) -> dict:
    weak, histo = cohort / "weak.csv", cohort / "histo.csv"
    (tmp / "full").mkdir()
    (tmp / "full" / "notes.txt").write_text("keep me")
    pre = ["pretrain", "--manifest", str(weak), "--epochs", "1", "--slices-per-epoch", "8", *SMALL]
    fine = ["finetune", "--manifest", str(histo), "--epochs", "1", *SMALL]
    return {
        "no weak labels": (["pretrain", "--manifest", str(rewrite_manifest(weak, cohort / "noweak.csv", weak_label=None)),
                            "--out", str(tmp / "r1"), *SMALL], "no row has a weak_label"),
        "one histology class": (["finetune", "--manifest", str(rewrite_manifest(histo, cohort / "neg.csv", histo_label=0)),
                                 "--out", str(tmp / "r2"), *SMALL], "0 positive"),
        "batch above cohort": ([*pre, "--out", str(tmp / "r3"), "--batch-size", "64", *NO_MONITOR], "exceeds the 8 patients"),
        "batch above training patients": ([*pre, "--out", str(tmp / "r8"), "--batch-size", "8"], "--monitor-fraction"),
        "accumulate above batch": ([*pre, "--out", str(tmp / "r4"), "--batch-size", "4", "--accumulate", "9"],
                                   "--accumulate 9"),
        "existing output": ([*pre, "--out", str(tmp / "full"), "--batch-size", "4"], "--force"),
        "resume nothing": ([*pre, "--out", str(tmp / "r5"), "--resume"], "nothing to resume"),
        "init not a run": ([*fine, "--out", str(tmp / "r6"), "--init", str(tmp / "full")], "not a pretrain run folder"),
        "init unfinished": ([*fine, "--out", str(tmp / "r7"), "--init", str(tmp / "unfinished")], "--resume"),
        "export no model": (["export", "--run", str(pretrained), "--out", str(tmp / "b")], "no model.pt"),
    }


CASES = ["no weak labels", "one histology class", "batch above cohort", "batch above training patients",
         "accumulate above batch", "existing output",
         "resume nothing", "init not a run", "init unfinished", "export no model"]


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_exit_2_with_a_message_naming_the_problem(case, cohort, pretrained, tmp_path, capsys):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "checkpoint.pt").write_bytes(b"")
    argv, fragment = _bad_cases(cohort, tmp_path, pretrained)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob("r[0-9]")) and not (tmp_path / "b").exists()  # a refused run leaves no folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_config_error(cohort, tmp_path, capsys):
    assert main(["pretrain", "--manifest", str(cohort / "weak.csv"), "--out", str(tmp_path / "r"),
                 "--image-size", "32", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


# ------------------------------------------------------------------ recipes


def test_paper_recipe_is_exactly_the_papers_settings():
    cfg, changed = apply_recipe(PretrainConfig(manifest=Path("w.csv"), out=Path("o"), recipe="paper",
                                               train=TrainConfig(lr=1e-3, epochs=3)))
    t = cfg.train
    assert (t.lr, t.weight_decay, t.epochs, t.batch_size) == (1e-5, 1e-5, 40, 64)
    assert cfg.slices_per_epoch == 10000 and cfg.head_norm == "none"  # the paper's Linear-ReLU-Linear head
    assert cfg.sigma == 0.85 and cfg.position_groups == 0  # their config's kernel, slices drawn uniformly
    assert "--sigma 0.1 -> 0.85" in changed and "--position-groups 4 -> 0" in changed
    assert "--lr 0.001 -> 1e-05" in changed and "--epochs 3 -> 40" in changed
    a = AUGMENTS["paper"]
    assert a is PAPER_AUGMENT and a.scale == (0.7, 0.7) and a.translate == 0.2 and a.rotate_deg == 30.0
    assert (a.flip_lr, a.flip_ud, a.p_crop, a.p_translate, a.p_rotate) == (0.5,) * 5
    assert a.contrast == 0.0 and a.brightness == 0.0  # no intensity augmentation


def test_default_recipe_keeps_the_flags_and_uses_the_default_augmentations():
    given = PretrainConfig(manifest=Path("w.csv"), out=Path("o"), train=TrainConfig(lr=3e-4, epochs=3))
    assert apply_recipe(given) == (given, [])
    a = AUGMENTS["default"]
    assert a.scale == (0.7, 1.0) and (a.p_crop, a.p_translate, a.p_rotate) == (1.0, 1.0, 1.0)
    assert given.head_norm == "batch"
    assert (given.sigma, given.position_groups) == (0.1, 4)  # the default recipe's departures (docs/method.md)


def test_paper_augmentation_leaves_each_transform_out_about_half_the_time():
    params = PAPER_AUGMENT.sample(4000, torch.Generator().manual_seed(0))
    theta = params.theta.double()
    rotated = (theta[:, 0, 1].abs() > 1e-6).double().mean()
    shifted = (theta[:, :, 2].abs().sum(1) > 1e-9).double().mean()
    scale = theta[:, :, :2].det().abs()  # crop area fraction: 0.7 when cropped, 1 otherwise
    assert 0.46 < float(rotated) < 0.54 and 0.46 < float(shifted) < 0.54
    assert set(np.round(scale.numpy(), 4)) == {0.7, 1.0} and torch.equal(params.gain, torch.ones(4000))


def test_slices_per_epoch_sets_the_steps_per_epoch(tmp_path):
    cfg = dataclasses.replace(_pretrain_cfg(tmp_path / "run", batch_size=4), slices_per_epoch=10)
    run = pretrain_mod.pretrain(cfg, fake_patients(6, size=16))
    (line,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert line["step"] == 3  # ceil(10 / 4), whatever the cohort size


def test_slices_budget_sets_the_epochs_and_a_run_draws_that_many_slices(tmp_path):
    import dataclasses
    import json

    from conftest_train import fake_patients
    from wsp_cirrhosis.training.pretrain import pretrain
    from wsp_cirrhosis.training.recipes import apply_budget, slices_seen

    base = PretrainConfig(manifest=Path("w.csv"), out=tmp_path / "run", slices_per_epoch=100, slices=450,
                          monitor_fraction=0.0, train=TrainConfig(epochs=99, batch_size=8, device="cpu"))
    cfg = apply_budget(base)
    assert cfg.train.epochs == 5  # ceil(450 / 100)
    assert 450 <= slices_seen(cfg) < 450 + 5 * 8  # at most one batch per epoch of rounding
    assert apply_budget(dataclasses.replace(base, slices=0)).train.epochs == 99
    wide = apply_budget(dataclasses.replace(base, train=dataclasses.replace(base.train, batch_size=32)))
    assert wide.train.epochs == 5 and 450 <= slices_seen(wide) < 450 + 5 * 32  # equal budget at any batch size
    # short epochs (a benchmark epoch = one pass over 200 patients, 7 steps of 32): not 120 x 7 steps = 26,880
    cohort = apply_budget(dataclasses.replace(base, slices_per_epoch=200, slices=24000,
                                              train=dataclasses.replace(base.train, batch_size=32)))
    assert (cohort.train.epochs, slices_seen(cohort)) == (108, 24192)
    small = dataclasses.replace(base, slices=160, train=dataclasses.replace(base.train, batch_size=4))
    run = pretrain(small, fake_patients(12))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["train"]["epochs"] == 2 and saved["slices_per_epoch"] == 80  # 2 epochs x 20 steps x 4 = 160
    assert lines[-1]["step"] == 2 * 20
