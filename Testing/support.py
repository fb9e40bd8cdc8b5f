"""Small real images for tests: a CT-like volume with a liver, storage flips, DICOM series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def make_ct(shape_zyx=(24, 40, 48), spacing=(2.0, 1.5, 3.0), origin=(-40.0, -30.0, -50.0), seed=0):
    """(ct, mask) sitk images in LPS: air outside an elliptic body, an ellipsoid liver whose
    intensity pattern changes with z, so every slice is distinct."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    ct = np.full(shape_zyx, -1000.0)
    ct[(x / 0.9) ** 2 + (y / 0.8) ** 2 < 1] = 30.0
    liver = ((x + 0.3) / 0.45) ** 2 + (y / 0.5) ** 2 + (z / 0.7) ** 2 < 1
    ct[liver] = 90.0 + 40.0 * z[liver] + 20.0 * x[liver]
    ct += rng.normal(0, 5, shape_zyx)
    image = sitk.GetImageFromArray(ct.astype(np.int16))
    mask = sitk.GetImageFromArray(liver.astype(np.uint8))
    for im in (image, mask):
        im.SetSpacing(spacing)
        im.SetOrigin(origin)
    return image, mask


def flip_storage(image: sitk.Image, axis: int) -> sitk.Image:
    """The same physical volume stored with array axis `axis` (x=0, y=1, z=2) reversed."""
    arr = sitk.GetArrayFromImage(image)
    flipped = sitk.GetImageFromArray(np.flip(arr, axis=2 - axis).copy())
    flipped.SetSpacing(image.GetSpacing())
    last = [0, 0, 0]
    last[axis] = image.GetSize()[axis] - 1
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint(last))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    direction[:, axis] *= -1
    flipped.SetDirection(direction.ravel().tolist())
    return flipped


def write_dicom_series(image: sitk.Image, folder: Path) -> Path:
    """Write an int16 volume as a CT DICOM series (one file per slice) with SimpleITK."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1." + str(abs(hash(folder)) % 10**12)
    common = {
        "0008|0060": "CT",
        "0020|000d": series_uid + ".1",
        "0020|000e": series_uid + ".2",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])),
        "0028|1052": "0",
        "0028|1053": "1",
    }
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in common.items():
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0018|0050", f"{image.GetSpacing()[2]:.6f}")
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(sl)
    return folder


def export_spread_bundle(ct_path, mask_path, preprocess, run_dir: Path, bundle_dir: Path, seed: int = 0) -> Path:
    """A random-init TinyNet classifier exported as a bundle named "tiny-test".

    Random pooled features barely vary between slices, so the head is scaled on this CT to
    spread the slice scores over (0, 1): a flat curve would prove nothing about ordering.
    """
    import torch

    from wsp_cirrhosis.inference.bundle import export_bundle
    from wsp_cirrhosis.files import to_dict
    from wsp_cirrhosis.models.encoders import build_encoder
    from wsp_cirrhosis.data.slices import prepare_ct
    from wsp_cirrhosis.models.heads import SliceClassifier

    torch.manual_seed(seed)
    model = SliceClassifier(build_encoder("tinynet"), "tinynet").eval()
    liver = prepare_ct(str(ct_path), str(mask_path), preprocess)
    with torch.no_grad():
        features = model.encoder(torch.from_numpy(liver.slices).unsqueeze(1))
        w = torch.randn(1, 512)
        w /= (features @ w.T).std()
        model.head.linear.weight.copy_(w)
        model.head.linear.bias.fill_(-float((features @ w.T).mean()))
    torch.save({"encoder_name": "tinynet", "encoder_state": model.encoder.state_dict(),
                "classifier_state": model.head.state_dict(), "preprocess": to_dict(preprocess),
                "threshold": 0.5, "class_names": ["no cirrhosis", "cirrhosis"]}, run_dir / "model.pt")
    return export_bundle(run_dir, bundle_dir, name="tiny-test")
