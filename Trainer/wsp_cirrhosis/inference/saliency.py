"""Relevance maps (`predict --saliency`): where on each liver slice the score comes from.

Method: Grad-CAM (Selvaraju et al. 2017) of the cirrhosis logit, on the output of the
deepest convolutional block whose feature map is still at least 8 x 8 pixels (`pick_layer`):
TinyNet's fourth block at 64 px input (its last block is only 4 x 4 there), its last block at
224 px; ResNet-18's layer3 at 224 px (layer4 is 7 x 7). Why Grad-CAM, and why not the very
last block (docs/method.md, "Relevance maps"):

- one forward + one backward pass per batch, against 20-50 noisy passes for SmoothGrad
  (smoothed gradient x input), which matters on the CPU of a Slicer workstation; it is
  deterministic (no noise sample), so a CT's map is reproducible;
- it is class-discriminative and smooth at the scale of its block's receptive fields, and it
  passes the model-randomisation sanity check of Adebayo et al. (2018);
- the very last block is too coarse for the small bundled model: on the planted-sign test
  (Testing/trainer/test_saliency.py, 64 px, TinyNet) one run measured a pointing-game hit rate of
  0.53 on the 4 x 4 last block against 0.91 on the 8 x 8 block (chance 0.14). A box-smoothed
  |gradient x input| also hit 1.0 on that clean phantom; on CT, gradient x input mixes evidence
  for and against the class (through the absolute value) and largely follows intensity and
  edges (Adebayo et al. 2018), which is what a reader must not mistake for a finding.
The map still shows regions, not pixels (1/8 of the input side, bilinearly upsampled).

Which logit follows the patient head: for ``mean`` each slice's own logit (every slice counts
alike in the mean); for ``bands`` / ``attention`` the patient logit, which reads all slices at
once, so a slice that the head ignores (a decoy at a height the attention does not look at) gets
little relevance. Its gradient reaches each slice's features through the head
(``_patient_logit_gradient``), then each batch of slices is re-run through the encoder: exact, at
the memory of one batch.

Geometry: the map is computed on the model's input (the square liver crop of `slices.prepare_ct`,
resized to image_size), then mapped back through the inverse resize and crop onto the canonical
(LPS) grid, and resampled (nearest neighbour on identical voxel centres, i.e. an exact axis
permutation / flip) onto the grid of the CT as given. Zero outside the crop and outside the
liver slices. Values: ReLU(Grad-CAM), ensemble members averaged, divided by the patient's
maximum, so 1 = the most relevant region of this patient.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import Cancelled, InputError

if TYPE_CHECKING:
    import torch

    from ..data.slices import LiverSlices
    from .scoring import ImageInput, LoadedModel

log = logging.getLogger("wsp_cirrhosis")

SALIENCY_FILES = {"saliency_nii": "saliency.nii.gz", "saliency_png": "saliency.png"}


MIN_SIDE = 8  # the Grad-CAM layer: the deepest conv block output with at least this many pixels a side


def has_conv(encoder: "torch.nn.Module") -> bool:
    from torch import nn

    return any(isinstance(m, nn.Conv2d) for m in encoder.modules())


def check_saliency_supported(model: "torch.nn.Module") -> None:
    """Fail early (before reading a CT) when a member's encoder has no conv layer.

    Raises:
        InputError: one line naming the encoder.
    """
    from ..models.patient_read import members_of

    for m in members_of(model):
        if not has_conv(m.encoder):
            name = getattr(m, "encoder_name", "") or type(m.encoder).__name__
            raise InputError(f"--saliency: the {name} encoder has no convolutional layer; Grad-CAM needs a "
                             "convolutional feature map (predict without --saliency)")


def _leaf_outputs(encoder: "torch.nn.Module", store: list) -> list:
    """Forward hooks appending (is_conv, output) of every leaf module, in execution order."""
    from torch import nn

    handles = []
    for module in encoder.modules():
        if next(module.children(), None) is None:
            is_conv = isinstance(module, nn.Conv2d)
            handles.append(module.register_forward_hook(
                lambda mod, inp, out, is_conv=is_conv: store.append((is_conv, out))))
    return handles


def pick_layer(calls: list, min_side: int = MIN_SIDE) -> int:
    """Index of the Grad-CAM feature map among the recorded leaf outputs: the last one, after the
    first convolution, whose map has >= `min_side` pixels a side (the output of the deepest
    block at that resolution, after its activation); the first conv's output if none is."""
    first_conv = next(i for i, (is_conv, _) in enumerate(calls) if is_conv)
    best = first_conv
    for i in range(first_conv, len(calls)):
        out = calls[i][1]
        if hasattr(out, "dim") and out.dim() == 4 and min(out.shape[-2:]) >= min_side:
            best = i
    return best


def _patient_logit_gradient(member: "torch.nn.Module", slices: np.ndarray, positions: Any, device: Any,
                            batch_size: int) -> "torch.Tensor":
    """(S, F) d patient logit / d slice features of a PatientClassifier (eval mode) on all slices."""
    import torch

    from ..models.features import batched_outputs

    if positions is None:
        raise InputError("saliency of a position-aware patient head needs the slices' positions")
    h = batched_outputs(member, slices, device, batch_size).to(device).requires_grad_()
    d = torch.as_tensor(np.asarray(positions), dtype=torch.float32, device=device)
    with torch.enable_grad():
        gradient, = torch.autograd.grad(member.read(h, d)[0], h)
    return gradient


def grad_cam(model: "torch.nn.Module", slices: np.ndarray, device: Any = "cpu", batch_size: int = 16,
             cancel: Optional[Callable[[], bool]] = None, min_side: int = MIN_SIDE,
             positions: Any = None) -> np.ndarray:
    """(S, H, W) float32 model inputs -> (S, H, W) float32 non-negative Grad-CAM maps of the
    positive logit (each slice's; the patient logit for a position-aware head, which needs the
    slices' ``positions`` d), averaged over ensemble members; not normalised.

    Raises:
        InputError: an encoder without conv layers.
    """
    import torch
    import torch.nn.functional as F

    from ..models.patient_read import members_of

    check_saliency_supported(model)
    members = members_of(model)
    n, h, w = slices.shape
    out = np.zeros((n, h, w), dtype=np.float32)
    for member in members:
        member = member.float().eval()
        upstream = _patient_logit_gradient(member, slices, positions, device, batch_size) \
            if hasattr(member, "read") else None
        calls: list = []
        handles = _leaf_outputs(member.encoder, calls)
        layer = None
        try:
            for start in range(0, n, batch_size):
                if cancel is not None and cancel():
                    raise Cancelled("saliency cancelled")
                x = torch.from_numpy(np.ascontiguousarray(slices[start:start + batch_size], dtype=np.float32))
                calls.clear()
                with torch.enable_grad():
                    out_b = member(x.unsqueeze(1).to(device)).float()
                    layer = pick_layer(calls, min_side) if layer is None else layer
                    act = calls[layer][1]
                    # the slices' own logits, or their features weighted by d patient logit / d h
                    target = out_b.sum() if upstream is None else (out_b * upstream[start:start + len(x)]).sum()
                    grads, = torch.autograd.grad(target, act)
                weights = grads.float().mean(dim=(2, 3), keepdim=True)
                cam = torch.relu((weights * act.detach().float()).sum(dim=1, keepdim=True))
                cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
                out[start:start + len(x)] += cam[:, 0].cpu().numpy() / len(members)
        finally:
            for handle in handles:
                handle.remove()
            calls.clear()
    return out


@dataclass
class SaliencyResult:
    """Grad-CAM of one patient.

    Attributes:
        volume: float32 map on the CT's own grid (size, spacing, origin, direction), in [0, 1].
        cams: (S, H, W) normalised maps at the model's input, liver slices inferior first.
        liver: the preprocessed liver slices (model inputs and their geometry).
    """

    volume: sitk.Image
    cams: np.ndarray
    liver: "LiverSlices"


def crop_boxes(canonical: sitk.Image, liver: "LiverSlices") -> list[tuple[int, int, int, int, int]]:
    """(k, i0, i1, j0, j1) of each liver slice on the canonical grid: the crop of
    `slices.extract_liver_slices`, recovered from its recorded centre and side."""
    from ..data.slices import square_crop  # slices imports torch; this module defers it

    spacing = canonical.GetSpacing()[:2]
    boxes = []
    for center in liver.center_lps:
        ci, cj, ck = canonical.TransformPhysicalPointToContinuousIndex([float(c) for c in center])
        boxes.append((int(round(ck)), *square_crop(ci, cj, liver.crop_mm, spacing)))
    return boxes


def to_ct_grid(cams: np.ndarray, liver: "LiverSlices", image: sitk.Image) -> sitk.Image:
    """Map (S, H, W) maps at the model input back onto the grid of `image` (the CT as given)."""
    import torch
    import torch.nn.functional as F

    from ..data.orientation import orient_to_canonical

    canonical = orient_to_canonical(image)
    size_i, size_j, size_k = canonical.GetSize()
    vol = np.zeros((size_k, size_j, size_i), dtype=np.float32)
    for cam, (k, i0, i1, j0, j1) in zip(cams, crop_boxes(canonical, liver)):
        # Inverse of the resize: bilinear back to the crop's voxel size (the forward resize was
        # bilinear too), then paste, dropping the part of the crop that lay outside the CT.
        back = F.interpolate(torch.from_numpy(np.ascontiguousarray(cam))[None, None], size=(j1 - j0, i1 - i0),
                             mode="bilinear", align_corners=False)[0, 0].numpy()
        sj0, sj1, si0, si1 = max(j0, 0), min(j1, size_j), max(i0, 0), min(i1, size_i)
        if 0 <= k < size_k and sj1 > sj0 and si1 > si0:
            vol[k, sj0:sj1, si0:si1] = back[sj0 - j0:sj1 - j0, si0 - i0:si1 - i0]
    out = sitk.GetImageFromArray(np.clip(vol, 0.0, None))
    out.CopyInformation(canonical)
    # canonical is a permutation / flip of the CT's axes: nearest neighbour on coinciding voxel
    # centres moves every value exactly, whatever the storage orientation.
    return sitk.Resample(out, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)


def compute_saliency(loaded: "LoadedModel", image: "ImageInput", mask: "ImageInput", *, liver_label: int | None = None,
                     batch_size: int = 16, cancel: Optional[Callable[[], bool]] = None) -> SaliencyResult:
    """Grad-CAM of every liver slice of one CT, on the CT's grid (see the module docstring).

    Reads and preprocesses the CT (`LoadedModel.prepare`); `saliency_of_slices` starts from
    slices already prepared (what `predict --saliency` does, so the CT is preprocessed once).

    Raises:
        InputError: an encoder without conv layers, unreadable CT / mask, no liver slice.
    """
    check_saliency_supported(loaded.model)
    if mask is None:
        raise InputError("--saliency: needs the liver mask (--liver-mask)")
    liver, ct, _ = loaded.prepare(image, mask, liver_label=liver_label, cancel=cancel)
    return saliency_of_slices(loaded, liver, ct, batch_size=batch_size, cancel=cancel)


def saliency_of_slices(loaded: "LoadedModel", liver: "LiverSlices", image: sitk.Image, *, batch_size: int = 16,
                       cancel: Optional[Callable[[], bool]] = None) -> SaliencyResult:
    """Grad-CAM of the prepared liver slices of `image` (the CT as read), mapped onto its grid."""
    check_saliency_supported(loaded.model)
    cams = grad_cam(loaded.model, liver.slices, loaded.device, batch_size, cancel, positions=liver.positions)
    peak = float(cams.max())
    cams = cams / peak if peak > 0 else cams
    return SaliencyResult(to_ct_grid(cams, liver, image), cams.astype(np.float32), liver)


def plot_saliency(result: SaliencyResult, scores: Sequence[float], path: str | os.PathLike, top: int = 4,
                  title: str = "") -> Path:
    """saliency.png: the `top` highest-scoring liver slices (model input) with the map overlaid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..files import atomic_path

    scores = np.asarray(scores, dtype=float)
    picks = np.argsort(-scores, kind="stable")[:top]
    fig = Figure(figsize=(2.6 * len(picks) + 0.6, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    im = None
    for ax, i in zip(axes, picks):
        ax.imshow(result.liver.slices[i], cmap="gray", vmin=0, vmax=1)
        im = ax.imshow(np.ma.masked_less(result.cams[i], 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.5)
        ax.set_title(f"z {result.liver.z_mm[i]:.0f} mm, score {scores[i]:.2f}", fontsize=8)
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="relevance (Grad-CAM, patient max = 1)")
    fig.suptitle(title or "where the slice scores come from (highest-scoring liver slices)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return Path(path)


def write_saliency(folder: Path, loaded: "LoadedModel", liver: "LiverSlices", image: sitk.Image, prediction: Any, *,
                   batch_size: int = 16, cancel: Optional[Callable[[], bool]] = None) -> dict[str, str]:
    """saliency.nii.gz + saliency.png into `folder` from the prepared slices of `image` (the CT as
    read); records their names in `prediction.extra`."""
    from ..files import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    result = saliency_of_slices(loaded, liver, image, batch_size=batch_size, cancel=cancel)
    with atomic_path(folder / SALIENCY_FILES["saliency_nii"]) as tmp:
        sitk.WriteImage(result.volume, str(tmp) + ".nii.gz", True)
        os.replace(str(tmp) + ".nii.gz", tmp)
    # slice reads in prepare_ct order (inferior first), as the prediction lists them: the slice
    # score for head mean, the share of the patient logit for a position-aware head
    scores = [s.score if prediction.scale == "probability" else s.contribution * prediction.n_slices
              for s in sorted(prediction.slices, key=lambda s: s.z_mm)]
    plot_saliency(result, scores, folder / SALIENCY_FILES["saliency_png"],
                  title=f"Grad-CAM relevance, model {prediction.model_name}")
    prediction.extra["saliency"] = {"method": "grad_cam", **SALIENCY_FILES}
    return dict(SALIENCY_FILES)
