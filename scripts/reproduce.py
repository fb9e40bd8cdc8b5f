"""`make reproduce`: the paper's comparison (random init, SimCLR, SupCon, positional, PCL, WSP) on
the positional phantom, WSP and positional over one sigma grid, the global phantom as a negative
control, fine-tuning of the chosen cells, and a 2D embedding picture.

Stages: (1) the grid with the frozen probes (mean pooling, position bands, label efficiency) on the
positional phantom; WSP's sigma is chosen on the weak-set monitors: a separate weak-labelled
phantom cohort (OUT/cohort-monitor, the config's 'monitor' section) when there is one, else 20% of
the weak set held out; (2) the negative control on the global phantom at that sigma (its monitors:
20% of its weak set); (3) fine-tuning (random init, SupCon, WSP at that sigma by default; the
'finetune' section's patient heads) in the same benchmark folder, reusing the pretrained encoders;
(4) the embedding.

    python scripts/reproduce.py                 # default size (checked-in scripts/reproduce/default.json)
    python scripts/reproduce.py --full          # paper-like size, for a GPU (scripts/reproduce/full.json)
    python scripts/reproduce.py --config my.json --out DIR

Writes OUT/cohort, OUT/cohort-global (the phantoms), OUT/benchmark and OUT/control (results.json,
results.md, results.png, sigma.png, label_efficiency.png) and OUT/embedding.png. Interrupted? Run
the same command again: finished grid cells are kept (`benchmark --resume`). The cohort is synthetic: its numbers say how the methods behave
on phantoms, nothing about patients.
"""

from __future__ import annotations

import argparse
import json
import math
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

    from wsp_cirrhosis.data.preprocess import load_cohort
    from wsp_cirrhosis.config import PreprocessConfig
    from wsp_cirrhosis.models.features import load_pretrained_encoder

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


def chosen_sigma(bench: Path, encoder: str) -> float | None:
    """WSP's sigma chosen on the weak set's held-out monitors (benchmark.report.chosen_sigmas), never on histology."""
    from wsp_cirrhosis.benchmark.report import chosen_sigmas

    records = json.loads((bench / "results.json").read_text())
    return chosen_sigmas(records, encoder).get("wsp")


def benchmark(cohort: Path, out: Path, settings: dict, **override) -> None:
    """One `wsp-cirrhosis benchmark` (with --resume when `out` already has results)."""
    b = dict(settings, **override)
    argv = ["benchmark", "--weak", str(cohort / "weak.csv"), "--strong", str(cohort / "histo.csv"), "--out", str(out)]
    argv += sum((_flag(k, v) for k, v in b.items()), [])
    if (out / "results.json").exists():
        argv.append("--resume")
    run(argv)


def synth(out: Path, settings: dict) -> None:
    if not (out / "histo.csv").exists():
        run(["synth", "--out", str(out), *sum((_flag(k, v) for k, v in settings.items()), [])])


def _stage(name: str, start: float) -> None:
    print(f"\nreproduce: {name} ({time.monotonic() - start:.0f} s elapsed)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON with 'synth', 'benchmark' and optional 'monitor', 'control', 'finetune' sections")
    parser.add_argument("--full", action="store_true", help="the paper-like size (scripts/reproduce/full.json), for a GPU")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    args = parser.parse_args()
    config_path = args.config or HERE / "reproduce" / ("full.json" if args.full else "default.json")
    config = json.loads(config_path.read_text())
    start = time.monotonic()
    cohort, bench = args.out / "cohort", args.out / "benchmark"
    b = dict(config["benchmark"])
    encoder = b["encoders"].split(",")[0]
    _stage("1. positional phantom: pretraining grid + frozen probes", start)
    synth(cohort, config["synth"])
    monitor: dict = {}
    if "monitor" in config:  # monitors (and so the choice of sigma) on a separate weak cohort, not 20% of the weak set
        synth(args.out / "cohort-monitor", dict(config["synth"], histo_patients=0, id_prefix="mon-", **config["monitor"]))
        monitor = {"monitor_manifest": args.out / "cohort-monitor" / "weak.csv"}
    benchmark(cohort, bench, b, **monitor)
    sigma = chosen_sigma(bench, encoder)
    grid = [float(x) for x in str(b.get("sigmas", "")).split(",") if x.strip()]
    if sigma is None and grid:  # the monitor was undefined (too few held-out patients of a class)
        sigma = grid[0]
        print(f"reproduce: the weak-set monitor could not choose WSP's sigma; using the grid's first, {sigma:g}")
    sigma_text = "inf" if sigma is None or math.isinf(sigma) else f"{sigma:g}"
    print(f"reproduce: WSP sigma chosen on the weak-set monitors: {sigma_text}", flush=True)
    if "control" in config:  # the global phantom: the stage shows everywhere, position should not help
        _stage("2. negative control: global phantom", start)
        control = dict(config["control"])
        synth(args.out / "cohort-global", dict(config["synth"], signs=control.pop("signs", "global")))
        benchmark(args.out / "cohort-global", args.out / "control", b, sigmas=sigma_text, **control)
    if "finetune" in config:  # fine-tuning of the chosen cells, reusing their pretrained encoders
        _stage("3. fine-tuning", start)
        benchmark(cohort, bench, b, protocols="finetune", sigmas=sigma_text, **monitor, **config["finetune"])
    _stage("4. embedding figure", start)
    run_name = "wsp" if sigma is None else f"wsp-sigma{sigma_text}"
    figure = embedding_figure(bench / "runs" / run_name / encoder / "seed0", cohort / "weak.csv",
                              int(b["image_size"]), args.out / "embedding.png")
    print(f"\nreproduce: done in {time.monotonic() - start:.0f} s with {config_path.name}\n"
          f"table: {bench / 'results.md'}\nplots: {bench / 'results.png'}, {bench / 'sigma.png'}, "
          f"{bench / 'label_efficiency.png'}, {figure}\nsynthetic phantoms, not patient data")


if __name__ == "__main__":
    main()
