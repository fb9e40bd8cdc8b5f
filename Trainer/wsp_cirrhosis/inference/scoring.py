"""Patient inference: CT + liver mask + model bundle -> slice scores and the patient probability.

`predict_patient` (or `load_model(...).predict`) is the one entry point of the CLI
(`wsp-cirrhosis predict`, in predict.py) and the Slicer module. Preprocessing is `slices.prepare_ct`, never a copy; the patient
probability is read from the slices by the bundle's patient head (``models.patient_read``: the
mean of the slice probabilities for ``mean``, method.md; a position-aware logit otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..data.automask import check_mask_source, segment_liver
from ..errors import Cancelled, ConfigError, InputError

if TYPE_CHECKING:
    import torch

    from ..data.slices import LiverSlices
    from .bundle import ModelBundle

log = logging.getLogger("wsp_cirrhosis")

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
ImageInput = Union[str, os.PathLike, sitk.Image]


_MODEL_SHARE = (0.2, 0.95)  # progress fractions spanned by the model's batches


@dataclass(frozen=True)
class SliceScore:
    """The model's score on one liver slice.

    Attributes:
        slice_index: index of the slice along the slice axis of the image as given (not reoriented).
        z_mm: physical LPS z of the slice (superior coordinate), in mm.
        position: d in [0, 1], 0 = most inferior liver slice, 1 = most superior.
        score: P(positive class) for this slice read on its own, in [0, 1].
        center_lps: (x, y, z) physical LPS point at the liver box centre on this slice, in mm.
        contribution: the slice's share of the patient score on the head's scale (p_s / S for head
            mean, of the patient logit otherwise); n_slices x contribution is the slice's "read".
    """

    slice_index: int
    z_mm: float
    position: float
    score: float
    center_lps: tuple[float, float, float]
    contribution: float = 0.0


@dataclass(frozen=True)
class PatientPrediction:
    """The prediction for one patient; `slices` are ordered by z (inferior first).

    Attributes:
        probability: the patient probability in [0, 1] (calibrated when the bundle is), read by
            the bundle's patient head.
        label: 1 when probability >= threshold, else 0; an index into `class_names`.
        label_name: class_names[label].
        threshold: the bundle's decision threshold on the patient probability.
        model_name, model_sha256: the bundle used.
        device: torch device the model ran on ("cpu", "cuda:0").
        slices: one SliceScore per liver slice.
        class_names: names of class 0 and class 1.
        timings: seconds spent per stage (read_s, preprocess_s, load_model_s, model_s, total_s).
        extra: the patient head and its scale, ensemble spread and calibration fields
            (ensemble.summarise).
    """

    probability: float
    label: int
    label_name: str
    threshold: float
    model_name: str
    model_sha256: str
    device: str
    slices: list[SliceScore]
    class_names: tuple[str, ...] = ("no cirrhosis", "cirrhosis")
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def slice_scores(self) -> np.ndarray:
        """(S,) float64 slice scores, ordered by z."""
        return np.array([s.score for s in self.slices], dtype=np.float64)

    @property
    def slice_reads(self) -> np.ndarray:
        """(S,) float64 reads n_slices x contribution, ordered by z: the per-slice curve on the
        patient's scale, whose mean is ``extra["patient_score"]``."""
        return np.array([s.contribution for s in self.slices], dtype=np.float64) * self.n_slices

    @property
    def patient_head(self) -> str:
        return str(self.extra.get("patient_head", "mean"))

    @property
    def scale(self) -> str:
        """"probability" (head mean) or "logit": the scale of the slice reads and ``score_threshold``."""
        return str(self.extra.get("scale", "probability"))

    @property
    def patient_score(self) -> float:
        """The patient's read on ``scale`` (the uncalibrated probability, or the patient logit)."""
        return float(self.extra.get("patient_score", self.extra.get("raw_probability", self.probability)))

    @property
    def score_threshold(self) -> float:
        """The decision threshold on ``scale``: label 1 when ``patient_score`` >= it."""
        return float(self.extra.get("threshold_on_scale", self.extra.get("raw_threshold", self.threshold)))


def image_from_array(
    array_zyx: np.ndarray,
    spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
    origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
    direction_3x3: Any = None,
) -> sitk.Image:
    """Wrap a numpy volume with its geometry as a SimpleITK image (ITK / LPS conventions).

    Args:
        array_zyx: (K, J, I) array indexed [slice, row, column], e.g. HU for a CT, labels for a mask.
        spacing_xyz: voxel size along I, J, K in mm.
        origin_xyz: LPS position of voxel (0, 0, 0) in mm.
        direction_3x3: 3x3 matrix whose column n is the LPS direction of index axis n (I, J, K),
            or its 9 values row by row; None = identity.

    Raises:
        InputError: not a 3D array, or a geometry of the wrong length.
    """
    arr = np.asarray(array_zyx)
    if arr.ndim != 3:
        raise InputError(f"image_from_array: array of shape {arr.shape}; a 3D (z, y, x) volume is required")
    direction = np.eye(3) if direction_3x3 is None else np.asarray(direction_3x3, dtype=np.float64)
    if direction.size != 9 or len(spacing_xyz) != 3 or len(origin_xyz) != 3:
        raise InputError("image_from_array: spacing_xyz and origin_xyz need 3 values, direction_3x3 needs 3x3")
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetOrigin([float(o) for o in origin_xyz])
    image.SetDirection([float(d) for d in direction.reshape(-1)])
    return image


def _autocast(device: "torch.device", cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """Half precision on GPU (bfloat16 where supported); on CPU float32 unless `cpu_bf16` asks for
    bfloat16 (2-3x faster on CPUs with AVX-512 BF16 / AMX; scores move by about 1e-3)."""
    import torch

    if device.type != "cuda":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16) if cpu_bf16 else contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def check_cancel(cancel: CancelFn | None) -> None:
    """Raise Cancelled when `cancel()` says so (the check itself may raise a more precise Cancelled)."""
    if cancel is not None and cancel():
        raise Cancelled("prediction cancelled")


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


@dataclass
class LoadedModel:
    """A bundle's classifier in eval mode on a device; reuse it across patients."""

    bundle: "ModelBundle"
    model: "torch.nn.Module"
    device: "torch.device"
    load_s: float = 0.0
    bf16: bool = False

    def predict(
        self,
        image: ImageInput,
        mask: ImageInput | None = None,
        *,
        batch_size: int = 32,
        liver_label: int | None = None,
        auto_mask: bool = False,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> PatientPrediction:
        """Score one patient; see `predict_patient` for the arguments."""
        if batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
        timings: dict[str, float] = {"load_model_s": self.load_s}
        start = time.perf_counter()
        prepared = self.prepare(image, mask, liver_label=liver_label, auto_mask=auto_mask, progress=progress,
                                cancel=cancel, timings=timings)
        liver, mask_path = prepared[0], prepared[2]
        del prepared, image, mask  # the full volumes are no longer needed: free them before the model runs
        return self.predict_slices(liver, batch_size=batch_size, progress=progress, cancel=cancel,
                                   timings=timings, mask_name=str(mask_path or "liver mask"), start=start)

    def prepare(
        self,
        image: ImageInput,
        mask: ImageInput | None = None,
        *,
        liver_label: int | None = None,
        auto_mask: bool = False,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        timings: dict[str, float] | None = None,
    ) -> tuple["LiverSlices", sitk.Image, Optional[Path]]:
        """Read and preprocess one CT with this bundle's settings (`slices.prepare_ct`, once).

        Returns (liver slices, the CT as read, the mask's path or None). `predict` is `prepare`
        then `predict_slices`; `predict --saliency` keeps the CT to map its Grad-CAM back onto
        the CT's grid without preprocessing a second time. `timings` gets read_s, preprocess_s.
        """
        report = progress or (lambda fraction, message: None)
        timings = {} if timings is None else timings
        cfg = self.bundle.preprocess
        if liver_label is not None:
            cfg = dataclasses.replace(cfg, liver_label=liver_label)

        if mask is None:
            check_mask_source(auto_mask)  # fail before reading a large CT
        check_cancel(cancel)
        report(0.0, "reading the CT and the liver mask")
        with _timed(timings, "read_s"):
            image_path, image = _as_image(image, "image")
            if mask is None:
                mask_path, mask = None, segment_liver(image, self.device)
                cfg = dataclasses.replace(cfg, liver_label=None)  # the automatic mask is binary
            else:
                mask_path, mask = _as_image(mask, "liver mask")
        check_cancel(cancel)
        report(0.1, "preprocessing (orientation, liver slices)")
        from ..data.slices import prepare_ct

        with _timed(timings, "preprocess_s"):
            liver = prepare_ct(image, mask, cfg, image_path=image_path, mask_path=mask_path)
        return liver, image, mask_path

    def predict_slices(self, liver: "LiverSlices", *, batch_size: int = 32, progress: ProgressFn | None = None,
                       cancel: CancelFn | None = None, timings: dict[str, float] | None = None,
                       mask_name: str = "liver mask", start: float | None = None) -> PatientPrediction:
        """Score one patient already preprocessed by `slices.prepare_ct` with this bundle's settings
        (batch predict preprocesses in worker processes, data.pool.prepared_patients)."""
        report = progress or (lambda fraction, message: None)
        timings = {"load_model_s": self.load_s} if timings is None else timings
        start = time.perf_counter() if start is None else start
        if len(liver) == 0:
            raise InputError(f"{mask_name}: no liver slice in the image")
        with _timed(timings, "model_s"):
            outputs = self._score_slices(liver.slices, batch_size, report, cancel)
            from ..models.patient_read import model_heads, read_patient

            read = read_patient(outputs, liver.positions, model_heads(self.model))
        order = np.argsort(liver.z_mm, kind="stable")  # prepare_ct already orders by z; keep it explicit
        from ..models.ensemble import summarise  # ensemble mean/spread and calibration

        scores, probability, threshold, label, extra = summarise(read, self.bundle, order)
        slices = [
            SliceScore(int(liver.slice_index[i]), float(liver.z_mm[i]), float(liver.positions[i]),
                       float(scores[i]), tuple(float(c) for c in liver.center_lps[i]), float(read.contributions[i]))
            for i in order
        ]
        class_names = tuple(self.bundle.class_names)
        timings["total_s"] = time.perf_counter() - start + self.load_s
        report(1.0, f"P({class_names[-1]}) = {probability:.2f}")
        return PatientPrediction(
            probability=probability, label=label, label_name=class_names[label], threshold=threshold,
            model_name=self.bundle.name, model_sha256=self.bundle.sha256, device=str(self.device),
            slices=slices, class_names=class_names, timings=timings, extra=extra,
        )

    def _score_slices(self, slices: np.ndarray, batch_size: int, report: ProgressFn,
                      cancel: CancelFn | None) -> np.ndarray:
        """(S, H, W) float32 slices -> the members' outputs, `batch_size` slices at a time: (S, M)
        float32 slice logits (head mean; M = 1 for one model) or (S, M, F) slice features (the
        position-aware heads, read per patient by ``patient_read.read_patient``)."""
        import torch

        n = len(slices)
        n_batches = -(-n // batch_size)
        members = getattr(self.bundle, "n_members", 1)
        outputs: list[np.ndarray] = []
        lo, hi = _MODEL_SHARE
        with torch.inference_mode(), _autocast(self.device, self.bf16):
            for b, start in enumerate(range(0, n, batch_size)):
                check_cancel(cancel)
                chunk = np.ascontiguousarray(slices[start:start + batch_size], dtype=np.float32)
                x = torch.from_numpy(chunk).unsqueeze(1).to(self.device, non_blocking=True)
                x = x.contiguous(memory_format=torch.channels_last)
                out = self.model(x).float().reshape(len(chunk), members, -1)
                outputs.append(out.cpu().numpy())
                report(lo + (hi - lo) * (b + 1) / n_batches, f"model: batch {b + 1}/{n_batches} ({n} slices)")
        result = np.concatenate(outputs)
        return result[..., 0] if result.shape[-1] == 1 else result


def load_model(bundle: "ModelBundle | str | os.PathLike | None" = None, device: str = "auto",
               bf16: bool = False) -> LoadedModel:
    """Load a bundle (None = `bundle.default_bundle_path()`) and put its classifier on `device`
    (`bf16`: bfloat16 autocast on CPU too).

    Raises:
        BundleError: missing, corrupt or incompatible bundle (from `bundle.load_bundle`).
        ConfigError: unavailable device.
    """
    from ..distributed import resolve_device
    from .bundle import default_bundle_path, load_bundle

    start = time.perf_counter()
    dev = resolve_device(device)
    if bundle is None:
        bundle = default_bundle_path()
    if isinstance(bundle, (str, os.PathLike)):
        bundle = load_bundle(Path(bundle))
    import torch

    # channels_last: oneDNN (CPU) and cuDNN run these convolutions about 1.5-2x faster in NHWC.
    model = bundle.build_model().to(dev, memory_format=torch.channels_last).eval()
    return LoadedModel(bundle, model, dev, time.perf_counter() - start, bf16)


def predict_patient(
    image: ImageInput,
    mask: ImageInput | None = None,
    bundle: "ModelBundle | str | os.PathLike | None" = None,
    device: str = "auto",
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    *,
    liver_label: int | None = None,
    auto_mask: bool = False,
    bf16: bool = False,
) -> PatientPrediction:
    """Per-slice cirrhosis scores and the patient probability for one CT.

    Args:
        image: CT in HU: a file (NIfTI, NRRD, MetaImage), a DICOM folder, or a SimpleITK image
            (numpy arrays: wrap them with `image_from_array`).
        mask: liver mask of the same scan (same kinds); another grid is resampled onto the CT.
            None: TotalSegmentator when `auto_mask` and it is installed, else InputError.
        bundle: a loaded ModelBundle, a bundle folder, or None for the default bundle.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1"...
        batch_size: slices per forward pass.
        progress: called as progress(fraction in [0, 1], message) after each stage and batch.
        cancel: polled before each stage and batch; returning True raises Cancelled.
        liver_label: value of the liver in a multi-label mask (overrides the bundle's).
        auto_mask: segment the liver with TotalSegmentator when `mask` is None.
        bf16: bfloat16 autocast on CPU too (GPU runs in half precision anyway).

    Returns:
        PatientPrediction with one SliceScore per liver slice, ordered by z (inferior first).

    Raises:
        InputError: unreadable or inconsistent image / mask, or no mask.
        BundleError: bad bundle.  Cancelled: `cancel()` returned True.
    """
    check_cancel(cancel)
    loaded = load_model(bundle, device, bf16)
    return loaded.predict(image, mask, batch_size=batch_size, liver_label=liver_label,
                          auto_mask=auto_mask, progress=progress, cancel=cancel)


def _as_image(value: ImageInput, what: str) -> tuple[Optional[Path], sitk.Image]:
    """(path or None, image): reads paths with images.read_image (masks are binarised later)."""
    if isinstance(value, sitk.Image):
        return None, value
    if isinstance(value, np.ndarray):
        raise InputError(f"{what}: a numpy array carries no spacing or orientation; wrap it with "
                         "wsp_cirrhosis.inference.image_from_array(array_zyx, spacing_xyz, origin_xyz, direction_3x3)")
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{what}: expected a file path, a DICOM folder or a SimpleITK image, "
                         f"not {type(value).__name__}")
    from ..data.images import read_image

    path = Path(value)
    return path, read_image(path)
