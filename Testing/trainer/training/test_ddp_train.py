"""Real 2-process pretraining (gloo, CPU) against one process on the same data and seed.

Two checks:
- float64, via torch.multiprocessing: ``pretrain.pretrain`` in a real process group, with gradient
  caching on the 2-process side and the BatchNorm projection head (``--head-norm batch``, its
  statistics over the whole global batch); per-step losses and final weights (BatchNorm running
  statistics included) equal one process to 1e-10 (weights 1e-9, see the test). This is the exactness test of sampling,
  augmentation offsets, gathering, the head's global batch statistics and gradient averaging.
- float32, via ``torchrun -m wsp_cirrhosis pretrain``: the command a user runs. Per-step losses
  match to 1e-5. Weights are compared loosely: TinyNet's features are nearly identical across
  slices at initialisation (all similarities ~1, loss = log(2N - 1)), so some gradient entries
  (e.g. the projection biases) are float32 cancellation noise, which Adam's per-entry
  normalisation turns into updates of up to ~lr in either process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest_train import fake_patients, run_states, shared_cohort
from wsp_cirrhosis.cli import main
from wsp_cirrhosis.config import PretrainConfig, TrainConfig

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _config(out: Path, accumulate: int) -> PretrainConfig:
    return PretrainConfig(manifest=Path("fake.csv"), out=out, method="wsp", sigma=0.5, head_norm="batch",
                          slices_per_epoch=4, monitor_fraction=0.0, train=TrainConfig(
                              epochs=2, batch_size=4, lr=1e-3, seed=4, device="cpu", accumulate=accumulate))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from wsp_cirrhosis import distributed
    from wsp_cirrhosis.training import pretrain

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        pretrain.pretrain(_config(Path(out), accumulate=2), fake_patients(4, size=16, seed=2))
    finally:
        distributed.cleanup_distributed()


def test_two_processes_give_the_single_process_losses_and_weights_in_float64(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        from wsp_cirrhosis.training import pretrain

        pretrain.pretrain(_config(tmp_path / "one", accumulate=1), fake_patients(4, size=16, seed=2))
    finally:
        torch.set_default_dtype(previous)
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    assert _losses(ddp) == pytest.approx(_losses(one), rel=0, abs=1e-10) and len(_losses(one)) == 2
    a, b = run_states(one), run_states(ddp)
    assert a["encoder.features.0.weight"].dtype == torch.float64 and "head.net.1.running_mean" in a
    for key in a:
        # 1e-9: the head's BatchNorm removes the batch mean of the features, so the gradient of the
        # last GroupNorm bias is a near-cancellation (~1e-11 relative rounding), which Adam's
        # per-entry normalisation turns into weight differences of ~1e-10 after two steps.
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-9, msg=key)
    moved = torch.load(one / "checkpoint.pt", weights_only=True)
    assert json.loads((ddp / "metrics.jsonl").read_text().splitlines()[0])["world_size"] == 2
    assert moved["epoch"] == 2


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_torchrun_pretrain_matches_one_process(tmp_path, tmp_path_factory):
    cohort = shared_cohort(tmp_path_factory)
    args = ["pretrain", "--manifest", str(cohort / "weak.csv"), "--epochs", "3", "--batch-size", "8",
            "--lr", "1e-3", "--image-size", "16", "--device", "cpu", "--monitor-fraction", "0", "--slices-per-epoch", "8",
            "--head-norm", "none"]  # float32: see the module docstring; the BatchNorm head is checked in float64
    assert main([*args, "--out", str(tmp_path / "one")]) == 0  # also builds the slice cache
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "wsp_cirrhosis", *args,
                           "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("pretrained encoder:") == 1  # rank 0 alone reports and writes
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    assert sorted(p.name for p in ddp.iterdir()) == ["checkpoint.pt", "config.json", "encoder.pt", "metrics.jsonl"]
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
    assert _losses(ddp) == pytest.approx(_losses(one), rel=0, abs=1e-5)
    # Weights: the two runs must agree far better than either moved from the initial weights
    # (see the module docstring for why float32 Adam runs are not equal entry by entry).
    from wsp_cirrhosis.models.heads import ProjectionHead, Projector
    from wsp_cirrhosis.models.encoders import build_encoder

    torch.manual_seed(0)  # pretrain's initialisation for --seed 0
    init = {f"{k}": v for k, v in Projector(build_encoder("tinynet"), ProjectionHead(norm="none")).state_dict().items()}
    flat = lambda states: torch.cat([states[k].flatten() for k in sorted(states)])  # noqa: E731
    a, b, start = flat(run_states(one)), flat(run_states(ddp)), flat(init)
    assert (a - b).norm() < 0.05 * (a - start).norm()


def _buffer_worker(rank: int, world: int, port: int, out: str) -> None:
    from wsp_cirrhosis import distributed
    from wsp_cirrhosis.training.loop import _average_buffers

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo")
    try:
        bn = torch.nn.BatchNorm2d(3)
        bn.train()
        bn(torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(rank)) * (rank + 1))
        _average_buffers(bn)
        torch.save(bn.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        distributed.cleanup_distributed()


def test_batchnorm_running_statistics_are_averaged_over_ranks(tmp_path):
    """Each rank's BatchNorm sees only its own batches; eval-mode users (monitors, checkpoints,
    export) get the mean of the ranks' running statistics, the same on every rank."""
    mp.spawn(_buffer_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected = []
    for rank in range(2):
        bn = torch.nn.BatchNorm2d(3)
        bn(torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(rank)) * (rank + 1))
        expected.append(bn.state_dict())
    for key in ("running_mean", "running_var"):
        mean = (expected[0][key] + expected[1][key]) / 2
        assert not torch.allclose(expected[0][key], expected[1][key])
        torch.testing.assert_close(states[0][key], mean)
        torch.testing.assert_close(states[1][key], mean)
    assert states[0]["num_batches_tracked"] == 1  # integer counters are left alone
