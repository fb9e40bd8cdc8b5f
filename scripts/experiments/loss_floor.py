"""How low can a label-weighted loss go on a phantom, given what its images show? (docs/training.md)

An "oracle encoder" (a small MLP) is trained on the loss itself, not on images: its input per slice
is a description of what the slice shows, read from the phantom's cohort.json. Three inputs:

- ``position``: Fourier features of d only (an encoder that reads the liver height perfectly);
- ``image``: position + the amounts of sign and decoy the phantom drew on that slice (everything the
  positional phantom's images carry about the stage);
- ``label``: position + the weak label itself on every slice (the bound the loss excess is scaled to).

The loss excess it reaches is a floor for any image encoder with the same batches: a run that ends
near the ``image`` floor has learned what there is to learn. Synthetic phantoms only.

    python scripts/experiments/loss_floor.py --cohort COHORT/cohort.json [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsp_cirrhosis.phantom.anatomy import NODULES_DECOY_D, NODULES_SIGN_D
from wsp_cirrhosis.training.losses import contrastive_loss
from wsp_cirrhosis.training.monitors import loss_excess, weight_entropy
from wsp_cirrhosis.training.samplers import PatientSampler

INPUTS = ("position", "image", "label")


def slice_table(cohort: Path) -> list[dict]:
    """Per weak patient: positions d (liver slices), weak label, and the sign / decoy amounts."""
    doc = json.loads(Path(cohort).read_text())
    out = []
    for p in doc["patients"]:
        if p["set"] != "weak":
            continue
        ph = p["phantom"]
        d = np.linspace(0.0, 1.0, int(ph["liver_slices"]))
        out.append({"d": d, "weak": int(p["weak_label"]), "sign": float(ph["sign_level"]),
                    "decoy": 1.0 - float(ph["sign_level"]) + float(ph["decoy_level"])})
    return out


def describe(p: dict, rows: np.ndarray, what: str) -> np.ndarray:
    """(len(rows), F) oracle input of patient p's slices ``rows``."""
    d = p["d"][rows]
    freqs = np.arange(1, 9)
    feats = [np.sin(np.pi * freqs * d[:, None]), np.cos(np.pi * freqs * d[:, None])]
    if what == "image":
        in_sign = (d >= NODULES_SIGN_D[0]) & (d <= NODULES_SIGN_D[1])
        in_decoy = (d >= NODULES_DECOY_D[0]) & (d <= NODULES_DECOY_D[1])
        feats.append(np.stack([p["sign"] * in_sign, p["decoy"] * in_decoy, in_sign, in_decoy], 1))
    elif what == "label":
        feats.append(np.eye(3)[np.full(len(d), p["weak"])])
    return np.concatenate(feats, 1).astype(np.float32)


def floor(patients: list[dict], what: str, method: str, sigma: float, batch: int, groups: int, steps: int,
          tau: float = 0.1, seed: int = 0) -> float:
    """Mean loss excess over 100 fresh batches after ``steps`` Adam steps of the oracle on the loss."""
    torch.manual_seed(seed)
    n_in = describe(patients[0], np.array([0]), what).shape[1]
    net = nn.Sequential(nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sampler = PatientSampler([p["weak"] for p in patients], [len(p["d"]) for p in patients], batch, seed,
                             steps_per_epoch=100, position_groups=groups)

    def batches(epoch: int):
        for pat, rows in sampler.epoch(epoch):
            x = np.concatenate([describe(patients[i], np.array([r]), what) for i, r in zip(pat, rows)])
            y = torch.tensor([patients[i]["weak"] for i in pat])
            d = torch.tensor([patients[i]["d"][r] for i, r in zip(pat, rows)], dtype=torch.float32)
            yield torch.from_numpy(x), y, d

    kw = {"method": method, "sigma": sigma, "tau": tau}
    for epoch in range(-(-steps // 100)):
        for x, y, d in batches(epoch):
            z = net(x)
            loss = contrastive_loss(z, z, labels=y, positions=d, **kw)
            opt.zero_grad()
            loss.backward()
            opt.step()
    excess = []
    with torch.no_grad():
        for x, y, d in batches(10_000):
            z = net(x)
            loss = float(contrastive_loss(z, z, labels=y, positions=d, **kw))
            excess.append(loss_excess(loss, weight_entropy(y, d, method, sigma, 0.1), batch))
    return float(np.mean(excess))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    patients = slice_table(args.cohort)
    settings = [("supcon", float("inf"), 32, 0), ("wsp", 0.85, 32, 0), ("wsp", 0.4, 32, 0), ("wsp", 0.1, 32, 0),
                ("wsp", 0.1, 32, 4), ("wsp", 0.1, 128, 4), ("supcon", float("inf"), 128, 4)]
    print("| loss | sigma | batch | position groups | " + " | ".join(f"floor, {w} input" for w in INPUTS) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---:" for _ in INPUTS) + " |")
    rows = []
    for method, sigma, batch, groups in settings:
        values = {w: floor(patients, w, method, sigma, batch, groups, args.steps) for w in INPUTS}
        rows.append({"method": method, "sigma": sigma, "batch": batch, "groups": groups, **values})
        s = "—" if method == "supcon" else f"{sigma:g}"
        print(f"| {method} | {s} | {batch} | {groups} | " + " | ".join(f"{values[w]:.3f}" for w in INPUTS) + " |",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
