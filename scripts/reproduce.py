"""`make reproduce`: the paper's comparison (random init, SimCLR, SupCon, positional, PCL, WSP)
and the WSP sigma ablation on a synthetic phantom cohort, plus a 2D embedding picture.

    python scripts/reproduce.py                 # default size (checked-in scripts/reproduce/default.json)
    python scripts/reproduce.py --full          # paper-like size, for a GPU (scripts/reproduce/full.json)
    python scripts/reproduce.py --config my.json --out DIR

Writes OUT/cohort (the phantoms), OUT/benchmark (results.json, results.md, results.png,
sigma.png) and OUT/embedding.png. Interrupted? Run the same command again: finished grid cells
are kept (`benchmark --resume`). The cohort is synthetic: its numbers say how the methods behave
on phantoms, nothing about patients.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from wsp_cirrhosis.cli import main as cli

HERE = Path(__file__).resolve().parent


def _flag(key: str, value) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    return [flag, str(value)]


def run(argv: list[str]) -> None:
    print("wsp-cirrhosis " + " ".join(argv), flush=True)
    code = cli(argv)
    if code != 0:
        sys.exit(f"reproduce: step failed with exit code {code}")


def embedding_figure(run_dir: Path, weak_csv: Path, image_size: int, out: Path, per_patient: int = 6,
                     seed: int = 0) -> Path:
    """PCA and t-SNE of pooled slice features of one pretrained encoder, coloured by weak label and by d."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from wsp_cirrhosis.cache import load_cohort
    from wsp_cirrhosis.config import PreprocessConfig
    from wsp_cirrhosis.features import load_pretrained_encoder

    _, encoder = load_pretrained_encoder(run_dir)
    encoder.eval()
    patients = load_cohort(weak_csv, PreprocessConfig(image_size=image_size))
    rng = np.random.default_rng(seed)
    images, labels, positions = [], [], []
    for p in patients:
        ks = np.sort(rng.choice(len(p.slices), size=min(per_patient, len(p.slices)), replace=False))
        images.append(np.asarray(p.slices[ks]))
        labels += [p.weak_label] * len(ks)
        positions += list(p.positions[ks])
    x = torch.from_numpy(np.concatenate(images))[:, None]
    with torch.inference_mode():
        feats = torch.cat([encoder(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)
    pca = PCA(n_components=2, random_state=seed).fit_transform(feats)
    tsne = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(feats)
    fig, axes = plt.subplots(2, 2, figsize=(9, 8), dpi=110)
    for row, (name, xy) in enumerate((("PCA", pca), ("t-SNE", tsne))):
        a = axes[row, 0].scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", s=6)
        axes[row, 0].set_title(f"{name}, coloured by weak label")
        fig.colorbar(a, ax=axes[row, 0], ticks=sorted(set(labels)))
        b = axes[row, 1].scatter(xy[:, 0], xy[:, 1], c=positions, cmap="coolwarm", s=6)
        axes[row, 1].set_title(f"{name}, coloured by position d")
        fig.colorbar(b, ax=axes[row, 1])
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    name = "/".join(run_dir.parts[-3:])
    fig.suptitle(f"Slice features of {name} ({len(x)} weak-set slices; synthetic phantoms)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="JSON with 'synth' and 'benchmark' sections")
    parser.add_argument("--full", action="store_true", help="the paper-like size (scripts/reproduce/full.json), for a GPU")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    args = parser.parse_args()
    config_path = args.config or HERE / "reproduce" / ("full.json" if args.full else "default.json")
    config = json.loads(config_path.read_text())
    start = time.monotonic()
    cohort, bench = args.out / "cohort", args.out / "benchmark"
    if not (cohort / "histo.csv").exists():
        run(["synth", "--out", str(cohort), *sum((_flag(k, v) for k, v in config["synth"].items()), [])])
    b = dict(config["benchmark"])
    argv = ["benchmark", "--weak", str(cohort / "weak.csv"), "--strong", str(cohort / "histo.csv"), "--out", str(bench)]
    argv += sum((_flag(k, v) for k, v in b.items()), [])
    if (bench / "results.json").exists():
        argv.append("--resume")
    run(argv)
    wsp_run = bench / "runs" / "wsp" / b["encoders"].split(",")[0] / "seed0"
    figure = embedding_figure(wsp_run, cohort / "weak.csv", int(b["image_size"]), args.out / "embedding.png")
    print(f"\nreproduce: done in {time.monotonic() - start:.0f} s with {config_path.name}\n"
          f"table: {bench / 'results.md'}\nplots: {bench / 'results.png'}, {bench / 'sigma.png'}, {figure}\n"
          "synthetic phantoms, not patient data")


if __name__ == "__main__":
    main()
