"""Synthetic abdominal CT phantoms with liver masks, and their cohort manifests (`wsp-cirrhosis synth`).

**These are phantoms, not patient data.** Every volume is drawn from a parametric model of the
upper abdomen: body wall (fat, muscle, ribs), spine and paraspinal muscles, aorta and inferior
vena cava, lung bases and heart above the diaphragm, stomach, spleen, kidneys, gallbladder,
bowel, and a liver made of a right lobe, a left lobe and a caudate lobe whose cross-sections
change along z, with intrahepatic vessels. A latent fibrosis stage 0..4 drives signs whose
visibility depends on the slice position d within the liver (0 = inferior tip, 1 = dome):

- surface nodularity (every level; outlined by fluid where there is ascites);
- heterogeneous parenchyma: fibrous septa around regenerative nodules, low-frequency mottling;
- caudate and left-lobe hypertrophy with right-lobe atrophy (mid and superior slices);
- ascites, perihepatic and paracolic (stage 3-4 only and not always; mostly inferior slices);
- splenomegaly (mid slices).

Scanner and patient confounders are drawn independently of the stage: noise, HU calibration
offset, contrast enhancement, slice thickness (so the number of liver slices varies), in-plane
field of view, body size and fat, natural lobe sizes, and the storage orientation of the file
(flipped x/y and/or z, with direction cosines that keep the physical anatomy unchanged).
The weak label is a noisy radiological reading of the stage; the histology label is stage == 4.
Same seed -> byte-identical files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .config import SynthConfig, to_dict
from .files import staged_output_dir, write_json_atomic, write_text_atomic
from .manifest import COLUMNS
from .progress import track

log = logging.getLogger("wsp_cirrhosis")

WEAK_CLASS_NAMES = ("normal", "signs of fibrosis", "cirrhosis")
# storage orientation -> is the canonical LPS array flipped along (x, y, z)? Same anatomy in all four.
ORIENTATIONS: dict[str, tuple[bool, bool, bool]] = {
    "LPS": (False, False, False), "RAS": (True, True, False), "LPI": (False, False, True), "RAI": (True, True, True)}
ORIENTATION_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
SETS = {"weak": 1, "histo": 2}  # part of each patient's seed, so the two sets never share a phantom


def severity(stage: int) -> float:
    """Magnitude of the cirrhosis signs in [0, 1]: convex in the stage, so stage 4 stands out."""
    return (stage / 4.0) ** 1.5


@dataclass(frozen=True)
class PhantomParams:
    """Everything that defines one phantom except its random texture fields. Lengths in mm."""

    stage: int                 # latent fibrosis stage 0..4
    orientation: str           # storage orientation, a key of ORIENTATIONS
    fov_mm: float              # in-plane field of view (spacing = fov_mm / size)
    slice_thickness_mm: float  # z spacing
    noise_hu: float            # standard deviation of the image noise
    hu_offset: float           # scanner calibration offset added to every voxel
    enhancement: float         # contrast phase in [0, 1]: 0 unenhanced, 1 strong portal-venous
    liver_hu: float            # mean parenchyma HU (50-120, follows the enhancement)
    body_scale: float          # organ and cavity size factor
    fat_mm: float              # subcutaneous fat thickness
    shift_x_mm: float          # body centre offset in the field of view
    shift_y_mm: float
    liver_height_mm: float     # craniocaudal extent of the liver
    margin_inferior_mm: float  # scanned range below the liver tip
    margin_superior_mm: float  # scanned range above the dome
    table_z_mm: float          # physical z of the liver's inferior tip
    right_lobe: float          # natural lobe / organ size factors (stage-independent)
    left_lobe: float
    caudate: float
    spleen: float
    gallbladder: float         # 0 = none (cholecystectomy), else its size factor
    stomach_gas: float         # fraction of the stomach filled with gas
    ascites_mm: float          # stage-driven: thickness of the fluid rim (0 = no ascites)

    @property
    def n_slices(self) -> int:
        total = self.liver_height_mm + self.margin_inferior_mm + self.margin_superior_mm
        return int(total // self.slice_thickness_mm) + 1


def draw_params(stage: int, rng: np.random.Generator) -> PhantomParams:
    """Draw one phantom's parameters; the draws happen in a fixed order whatever the stage.

    Raises:
        ValueError: `stage` is not in 0..4.
    """
    if stage not in range(5):
        raise ValueError(f"stage {stage}: must be 0..4")
    u = rng.uniform(size=18)
    scale = 0.88 + 0.24 * u[0]
    fat = 8.0 + 32.0 * u[1]
    height = (125.0 + 45.0 * u[2]) * scale
    m_inf, m_sup = 10.0 + 30.0 * u[3], 10.0 + 20.0 * u[4]
    total = height + m_inf + m_sup
    thickness = float(np.clip(1.5 + 3.5 * u[5], total / 79.0, total / 29.0))  # 30..80 slices
    body_x = 140.0 * scale + fat
    enhancement = float(u[6])
    ascites_p = {3: 0.3, 4: 0.75}.get(stage, 0.0)
    return PhantomParams(
        stage=stage,
        orientation=str(rng.choice(list(ORIENTATIONS), p=ORIENTATION_WEIGHTS)),
        fov_mm=max(340.0 + 80.0 * u[7], 2.0 * body_x + 30.0),
        slice_thickness_mm=thickness,
        noise_hu=8.0 + 17.0 * u[8],
        hu_offset=-20.0 + 40.0 * u[9],
        enhancement=enhancement,
        liver_hu=float(np.clip(50.0 + 70.0 * enhancement + rng.normal(0.0, 4.0), 50.0, 120.0)),
        body_scale=scale, fat_mm=fat,
        shift_x_mm=rng.normal(0.0, 6.0), shift_y_mm=rng.normal(0.0, 6.0),
        liver_height_mm=height, margin_inferior_mm=m_inf, margin_superior_mm=m_sup,
        table_z_mm=-300.0 + 200.0 * u[10],
        right_lobe=0.9 + 0.2 * u[11], left_lobe=0.85 + 0.3 * u[12], caudate=0.85 + 0.3 * u[13],
        spleen=0.85 + 0.3 * u[14],
        gallbladder=0.0 if u[15] < 0.15 else 0.8 + 0.4 * u[15],
        stomach_gas=0.1 + 0.5 * u[16],
        ascites_mm=(4.0 + 5.0 * stage * rng.uniform()) if u[17] < ascites_p else 0.0,
    )


def make_phantom(stage: int, rng: np.random.Generator, size: int = 96,
                 params: PhantomParams | None = None) -> tuple[sitk.Image, sitk.Image]:
    """One synthetic abdominal CT and its liver mask (a phantom, not patient data).

    Args:
        stage: latent fibrosis stage 0..4 (4 = cirrhosis).
        rng: source of every random draw (parameters when not given, then texture and noise).
        size: in-plane matrix (size x size voxels over `params.fov_mm`).
        params: fixed parameters (e.g. `dataclasses.replace` of a draw); drawn from `rng` if None.

    Returns:
        (ct, mask): int16 HU and uint8 (1 = liver) images on the same grid, stored in
        `params.orientation`; origin, spacing and direction place them in LPS physical space.

    Raises:
        ValueError: bad stage, or `params.stage` differs from `stage`.
    """
    if params is None:
        params = draw_params(stage, rng)
    elif params.stage != stage:
        raise ValueError(f"params.stage {params.stage} differs from stage {stage}")
    hu, liver = _render(params, rng, size)
    return _to_image(hu, params, size), _to_image(liver.astype(np.uint8), params, size)


def _to_image(arr: np.ndarray, p: PhantomParams, size: int) -> sitk.Image:
    """Store a canonical (z, y, x) LPS array in orientation `p.orientation` with matching geometry."""
    pix = p.fov_mm / size
    spacing = np.array([pix, pix, p.slice_thickness_mm])
    origin = np.array([-(size - 1) / 2 * pix, -(size - 1) / 2 * pix, p.table_z_mm - p.margin_inferior_mm])
    flips = ORIENTATIONS[p.orientation]
    signs = np.ones(3)
    last = np.array([size - 1, size - 1, arr.shape[0] - 1])
    for axis, flip in enumerate(flips):  # axis 0 = x (array axis 2)
        if flip:
            arr = np.flip(arr, axis=2 - axis)
            origin[axis] += last[axis] * spacing[axis]  # index 0 is now the far end
            signs[axis] = -1.0
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(np.diag(signs).ravel().tolist())
    return image


def _random_fields(rng: np.random.Generator, shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
                   scales_mm: tuple[float, ...]) -> list[np.ndarray]:
    """Unit-variance Gaussian random fields, one per Gaussian correlation scale (mm), float32 (Z, Y, X)."""
    kz = np.fft.fftfreq(shape[0], spacing_zyx[0]).astype(np.float32)[:, None, None]
    ky = np.fft.fftfreq(shape[1], spacing_zyx[1]).astype(np.float32)[None, :, None]
    kx = np.fft.rfftfreq(shape[2], spacing_zyx[2]).astype(np.float32)[None, None, :]
    k2 = kz ** 2 + ky ** 2 + kx ** 2
    fields = []
    for scale in scales_mm:
        gain = np.exp(-2.0 * np.pi ** 2 * scale ** 2 * k2)
        keep = gain > 1e-4  # draw only the frequencies the filter lets through: smooth fields are cheap
        white = rng.standard_normal((2, int(np.count_nonzero(keep))), dtype=np.float32)
        spec = np.zeros(k2.shape, np.complex64)
        spec[keep] = (white[0] + 1j * white[1]) * gain[keep]
        f = np.fft.irfftn(spec, s=shape, axes=(0, 1, 2)).astype(np.float32, copy=False)
        fields.append(f / (f.std() + 1e-12))
    return fields


def _ellipse(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an axis-aligned ellipse; radius 0 = absent."""
    rxs, rys = np.maximum(rx, 0.05), np.maximum(ry, 0.05)
    rho = np.sqrt(((x - cx) / rxs) ** 2 + ((y - cy) / rys) ** 2)
    return np.where(np.minimum(rx, ry) > 0.05, (rho - 1.0) * np.sqrt(rxs * rys), np.float32(1e3))


def _bump(t: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    """Lobe profile along t: 0 below a, rises to 1 at b, 1 until c, dome-shaped fall to 0 at d."""
    rise = np.sin(0.5 * np.pi * np.clip((t - a) / (b - a), 0.0, 1.0)) ** 0.7
    fall = np.sqrt(np.clip(1.0 - np.clip((t - c) / (d - c), 0.0, None) ** 2, 0.0, 1.0))
    return (rise * fall).astype(np.float32)


def _paint(img: np.ndarray, sdf: np.ndarray, hu, pix: float) -> None:
    """Blend `hu` into the view `img` with each voxel's coverage by sdf < 0 (partial volume)."""
    img += np.clip(0.5 - sdf / pix, 0.0, 1.0) * (hu - img)


class _Grid:
    """Voxel centres of a phantom in body coordinates (mm): x to the left, y posterior, z superior."""

    def __init__(self, p: PhantomParams, size: int):
        self.pix = p.fov_mm / size
        c = ((np.arange(size) - (size - 1) / 2) * self.pix).astype(np.float32)
        self.x, self.y = c - np.float32(p.shift_x_mm), c - np.float32(p.shift_y_mm)
        self.z = (np.arange(p.n_slices) * p.slice_thickness_mm - p.margin_inferior_mm).astype(np.float32)
        self.t = self.z / np.float32(p.liver_height_mm)  # 0 = liver tip, 1 = dome

    def box(self, x0: float, x1: float, y0: float, y1: float, t0: float = -np.inf, t1: float = np.inf):
        """(index slices (z, y, x), x (1,1,W'), y (1,H',1), z (Z',1,1), t (Z',1,1)) of a physical box."""
        def span(v: np.ndarray, lo: float, hi: float, pad: float) -> slice:
            lo_i, hi_i = np.searchsorted(v, lo - pad), np.searchsorted(v, hi + pad)
            return slice(int(lo_i), int(max(hi_i, lo_i)))
        sz = span(self.t, t0, t1, 0.0)
        sy, sx = span(self.y, y0, y1, self.pix), span(self.x, x0, x1, self.pix)
        return ((sz, sy, sx), self.x[sx][None, None, :], self.y[sy][None, :, None],
                self.z[sz][:, None, None], self.t[sz][:, None, None])


def _render(p: PhantomParams, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(hu float32 (Z, Y, X), liver bool (Z, Y, X)) in canonical LPS storage, k inferior -> superior."""
    g = _Grid(p, size)
    pix, nz, H, s, e = g.pix, p.n_slices, p.liver_height_mm, p.body_scale, severity(p.stage)
    shape = (nz, size, size)
    n_surf, n_low, n_sep, v1, v2 = _random_fields(rng, shape, (p.slice_thickness_mm, pix, pix), (6, 14, 4, 15, 15))
    noise = rng.standard_normal(shape, dtype=np.float32)
    enh = p.enhancement
    cax, cay, wall = 128.0 * s, 86.0 * s, 12.0 * s  # abdominal cavity semi-axes, muscle wall
    y_back = cay + wall + 0.5 * p.fat_mm           # flattened back (the patient lies on it)
    X2, Y2 = g.x[None, :], g.y[:, None]

    # --- body wall: constant along z, painted once in 2D
    base = np.full((size, size), -1000.0, np.float32)
    body = np.maximum(_ellipse(X2, Y2, 0, 0, cax + wall + p.fat_mm, cay + wall + p.fat_mm + 10), Y2 - y_back)
    _paint(base, body, -100.0, pix)
    muscle = np.maximum(_ellipse(X2, Y2, 0, 0, cax + wall, cay + wall), body + 3)
    _paint(base, muscle, 45.0, pix)
    _paint(base, np.maximum(np.abs(Y2 - y_back - 12) - 2.5, np.abs(X2) - 0.8 * (cax + p.fat_mm)), 150.0, pix)  # table
    cav = _ellipse(X2, Y2, 0, 0, cax, cay)
    img = np.broadcast_to(base, shape).copy()

    # --- cavity content: fat and bowel loops, gas pockets (3D texture)
    bowel = -100.0 + 135.0 / (1.0 + np.exp(-6.0 * (v1 - 0.3)))  # mostly fat, loops where v1 > 0.3
    bowel = np.where((v2 > 1.8) & (v1 > 0.3), np.float32(-900.0), bowel)
    _paint(img, cav[None], bowel, pix)

    # --- liver signed distance (computed first: ascites follows its surface)
    liver_box = (-cax, 0.95 * cax, -cay, cay, 0.0, 1.0)  # the liver stays 3 mm inside the cavity
    (lz, ly, lx), X, Y, _, T = g.box(*liver_box)
    f_r = p.right_lobe * (1.0 - 0.25 * e)          # right-lobe atrophy: the medial edge retracts
    p_r = _bump(T, 0.0, 0.3, 0.72, 1.0)
    right = _ellipse(X, Y, -(0.5 + 0.3 * (1 - f_r) + 0.1 * (1 - p_r)) * cax, (0.05 + 0.1 * (0.5 - T)) * cay,
                     0.4 * cax * f_r * p_r, 0.75 * cay * (0.6 + 0.4 * f_r) * p_r)
    f_l = p.left_lobe * (1.0 + 0.2 * e)            # left-lobe hypertrophy
    p_l = _bump(T, 0.35, 0.55, 0.8, 0.98)
    left = _ellipse(X, Y, 0.1 * cax + 0.2 * cax * (f_l - 1), -0.45 * cay, 0.45 * cax * f_l * p_l, 0.24 * cay * f_l * p_l)
    f_c = p.caudate * (1.0 + 0.6 * e)              # caudate hypertrophy
    p_c = _bump(T, 0.4, 0.52, 0.65, 0.82)
    caudate = _ellipse(X, Y, 0.0, -0.12 * cay, 0.13 * cax * f_c * p_c, 0.15 * cay * f_c * p_c)
    liver_sdf = np.maximum(np.minimum(np.minimum(right, left), caudate), cav[None, ly, lx] + 3.0)
    liver_sdf += (0.5 + 3.5 * e) * n_surf[lz, ly, lx]  # surface nodularity

    # --- ascites: perihepatic rim (mostly inferior) and paracolic gutters (inferior slices)
    if p.ascites_mm > 0:
        (az, _, _), _, _, _, T = g.box(-np.inf, np.inf, -np.inf, np.inf, -np.inf, 1.0)
        peri = np.full((az.stop - az.start, size, size), 1e3, np.float32)
        liver_t = T[lz.start - az.start:lz.stop - az.start]
        peri[lz.start - az.start:lz.stop - az.start, ly, lx] = liver_sdf - p.ascites_mm * np.clip((0.75 - liver_t) / 0.5, 0.15, 1.0)
        gutter = -cav[None] - 0.8 * p.ascites_mm * np.clip((0.45 - T) / 0.3, 0.0, 1.0)
        _paint(img[az], np.maximum(np.minimum(peri, gutter), cav[None]), 8.0, pix)

    # --- lung bases (cavity above the diaphragm) and heart
    (qz, _, _), X, Y, Z, _ = g.box(-np.inf, np.inf, -np.inf, np.inf, 0.7)
    r2 = np.clip((X / cax) ** 2 + (Y / cay) ** 2, 0.0, 1.0)
    dome = H * (0.72 + 0.27 * (1 - r2) + 0.25 * np.clip(-Y / cay, 0.0, 1.0))  # recesses low behind, high in front
    _paint(img[qz], np.maximum(cav[None], dome - Z), -850.0, pix)
    _ellipsoid(img, g, (0.15 * cax, -0.25 * cay, 1.3 * H), (0.45 * cax, 0.5 * cay, 0.35 * H), 40 + 150 * enh)

    # --- abdominal organs (the liver, painted later, indents them)
    gas_y = -0.25 * cay - 0.3 * cay * (1 - 2 * p.stomach_gas)
    _ellipsoid(img, g, (0.42 * cax, -0.25 * cay, 0.78 * H), (0.28 * cax, 0.3 * cay, 0.28 * H), 35.0, cav)
    _ellipsoid(img, g, (0.42 * cax, -0.25 * cay, 0.78 * H), (0.28 * cax - 3, 0.3 * cay - 3, 0.28 * H - 3), 15.0, cav,
               gas=(gas_y, -950.0))
    f_s = p.spleen * (1.0 + 0.35 * e)              # splenomegaly
    _ellipsoid(img, g, (0.62 * cax, 0.4 * cay, 0.62 * H), (0.2 * cax * f_s, 0.32 * cay * f_s, 0.22 * H * f_s),
               45 + 80 * enh, cav)
    for side, zc in ((-1, 0.05), (1, 0.15)):
        kidney = (side * 0.5 * cax, 0.5 * cay, zc * H)
        _ellipsoid(img, g, kidney, (24 * s, 22 * s, 50 * s), 35 + 160 * enh, cav)
        _ellipsoid(img, g, (kidney[0] - side * 8 * s, kidney[1], kidney[2]), (9 * s, 8 * s, 25 * s), -40.0)

    # --- spine and paraspinal muscles (constant along z; only their bounding box is touched)
    y_vb = 0.42 * cay
    for cx, cy, rx, ry, hu in ((-36 * s, y_vb + 48 * s, 28 * s, 24 * s, 50.0), (36 * s, y_vb + 48 * s, 28 * s, 24 * s, 50.0),
                               (0, y_vb + 38 * s, 22 * s, 10 * s, 350.0), (0, y_vb + 55 * s, 5 * s, 16 * s, 400.0),
                               (0, y_vb, 20 * s, 20 * s, 600.0), (0, y_vb, 16 * s, 16 * s, 220.0),
                               (0, y_vb + 28 * s, 8 * s, 8 * s, 20.0)):
        _column(img, g, cx, cy, rx, ry, hu, body)
    _ribs(img, g, X2, Y2, cav, muscle, cax, cay, y_back, s, H)

    # --- liver parenchyma: septa around regenerative nodules + mottling, then vessels
    tex = (p.liver_hu + (2.0 + 10.0 * e) * n_low[lz, ly, lx]
           - 35.0 * e * (np.exp(-(n_sep[lz, ly, lx] / 0.35) ** 2) - 0.2425))  # 0.2425 = its mean: HU level unchanged
    view = img[lz, ly, lx]
    _paint(view, liver_sdf, tex, pix)
    _, X, Y, _, T = g.box(*liver_box)
    depth = np.clip(-liver_sdf / 25.0, 0.0, 1.0)    # vessels taper towards the capsule
    vessel = np.sqrt(v1[lz, ly, lx] ** 2 + v2[lz, ly, lx] ** 2) * (15.0 / 1.22) - (1.0 + 3.0 * depth)
    ivc_x, ivc_y = -24 * s, y_vb - 28 * s
    for tx, ty in ((-0.75, 0.1), (-0.3, -0.45), (0.25, -0.5)):  # hepatic veins: from the IVC down and out
        f = np.clip((0.92 - T) / 0.4, 0.0, 1.0)
        hv = _ellipse(X, Y, ivc_x + f * (tx * cax - ivc_x), ivc_y + f * (ty * cay - ivc_y), 5.0 - 2.5 * f, 5.0 - 2.5 * f)
        vessel = np.minimum(vessel, np.where((T > 0.5) & (T < 0.92), hv, np.float32(1e3)))
    _paint(view, np.maximum(vessel, liver_sdf), 40 + 150 * enh, pix)
    liver = np.zeros(shape, bool)
    liver[lz, ly, lx] = liver_sdf < 0

    # --- structures that cut into the liver mask: gallbladder, portal vein, IVC; aorta
    cuts = [_ellipsoid(img, g, (-0.22 * cax, -0.42 * cay, 0.18 * H), (0.1 * cax * p.gallbladder, 0.13 * cay * p.gallbladder,
                                                                       0.2 * H * p.gallbladder), 10.0),
            _ellipsoid(img, g, (-0.2 * cax, -0.08 * cay, 0.43 * H), (0.2 * cax, 7.0 * s, 8.0 * s), 40 + 150 * enh),
            _column(img, g, ivc_x, ivc_y, 12 * s, 11 * s, 40 + 140 * enh, body),
            _column(img, g, 14 * s, y_vb - 30 * s, 11 * s, 11 * s, 45 + 220 * enh, body)]  # aorta
    for where, sdf in cuts:
        if sdf is not None:
            liver[where] &= ~(sdf < 0)

    img += p.noise_hu * noise + p.hu_offset
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16), liver


def _ellipsoid(img, g: _Grid, centre, radii, hu, clip_sdf=None, gas=None):
    """Paint an axis-aligned ellipsoid (clipped to `clip_sdf` (H, W) if given); return (index, sdf)."""
    (cx, cy, cz), (rx, ry, rz) = centre, radii
    if min(rx, ry, rz) <= 0:
        return None, None
    (_, sy, sx), X, Y, _, _ = g.box(cx - rx, cx + rx, cy - ry, cy + ry)
    sz = slice(*(int(i) for i in np.searchsorted(g.z, [cz - rz, cz + rz])))
    Z = g.z[sz][:, None, None]
    prof = np.sqrt(np.clip(1.0 - ((Z - cz) / rz) ** 2, 0.0, 1.0))
    sdf = _ellipse(X, Y, cx, cy, rx * prof, ry * prof)
    if clip_sdf is not None:
        sdf = np.maximum(sdf, clip_sdf[None, sy, sx])
    _paint(img[sz, sy, sx], sdf, hu, g.pix)
    if gas is not None:  # supine: gas floats anteriorly (towards -y) above a level
        _paint(img[sz, sy, sx], np.maximum(sdf + 1.0, Y - gas[0]), gas[1], g.pix)
    return (sz, sy, sx), sdf


def _column(img, g: _Grid, cx, cy, rx, ry, hu, body):
    """Paint an elliptic cylinder along z inside the body; return (index, sdf) over all slices."""
    (_, sy, sx), X, Y, _, _ = g.box(cx - rx, cx + rx, cy - ry, cy + ry)
    sdf = np.maximum(_ellipse(X[0], Y[0], cx, cy, rx, ry), body[sy, sx])
    _paint(img[:, sy, sx], sdf[None], hu, g.pix)
    return (slice(None), sy, sx), np.broadcast_to(sdf, (img.shape[0], *sdf.shape))


def _ribs(img, g: _Grid, X2, Y2, cav, muscle, cax, cay, y_back, s, H) -> None:
    """Rib cross-sections in the muscle wall; anterior ribs only in upper slices (costal margin)."""
    band = ((cav > 1.5) & (muscle < -1.5) & (Y2 < y_back - 30 * s) & ~((np.abs(X2) < 50 * s) & (Y2 > 0))
            & ~((np.abs(X2) < 30 * s) & (Y2 < 0)))
    idx = np.flatnonzero(band)
    if idx.size == 0:
        return
    xb, yb = np.broadcast_to(X2, band.shape).ravel()[idx], np.broadcast_to(Y2, band.shape).ravel()[idx]
    theta = np.arctan2(yb / cay, np.abs(xb) / cax)
    wave = np.cos(7.0 * theta[None] + 2 * np.pi * g.z[:, None] / 38.0)
    z_min = H * (0.25 + 0.45 * np.clip(-yb / cay, 0.0, 1.0))
    alpha = np.clip((wave - 0.75) / 0.15, 0.0, 1.0) * (g.z[:, None] > z_min[None])
    flat = img.reshape(img.shape[0], -1)
    flat[:, idx] += alpha * (450.0 - flat[:, idx])


# ------------------------------------------------------------------ cohorts: labels, manifests, files


def read_weak_label(stage: int, rng: np.random.Generator, reader_noise: float = 0.85) -> int:
    """A radiologist's noisy reading: stage + N(0, reader_noise) binned at 1.5 / 3.5 into 0, 1, 2.

    Misreadings go mostly to the neighbouring class; reader_noise 0.85 misreads about 25% of a
    class-balanced cohort, 0 gives the true class (0: stage 0-1, 1: stage 2-3, 2: stage 4).
    """
    score = stage + reader_noise * rng.standard_normal()
    return int(np.searchsorted([1.5, 3.5], score))


def draw_stages(n: int, rng: np.random.Generator, kind: str, cirrhosis_fraction: float = 0.3) -> np.ndarray:
    """(n,) int stages in random order.

    kind "weak": the three true weak classes (stages 0-1, 2-3, 4) in equal numbers (+-1);
    kind "histo": round(cirrhosis_fraction * n) patients at stage 4, the rest uniform over 0..3.

    Raises:
        ValueError: unknown `kind`.
    """
    if kind == "weak":
        cls = np.arange(n) % 3
        stages = np.where(cls == 0, rng.integers(0, 2, n), np.where(cls == 1, rng.integers(2, 4, n), 4))
    elif kind == "histo":
        n_pos = int(round(cirrhosis_fraction * n))
        stages = np.concatenate([np.full(n_pos, 4), rng.integers(0, 4, n - n_pos)])
    else:
        raise ValueError(f"kind {kind!r}: choose 'weak' or 'histo'")
    return rng.permutation(stages).astype(int)


def plan_cohort(cfg: SynthConfig) -> list[dict]:
    """One dict per patient (set, index, patient_id, stage, weak_label, histo_label), weak set first."""
    reader_noise = cfg.reader_noise
    plan = []
    for name, n in (("weak", cfg.patients), ("histo", cfg.histo_patients)):
        rng = np.random.default_rng([cfg.seed, SETS[name]])
        for i, stage in enumerate(draw_stages(n, rng, name, cfg.cirrhosis_fraction)):
            plan.append({"set": name, "index": i, "patient_id": f"{name}-{i:04d}", "stage": int(stage),
                         "weak_label": read_weak_label(int(stage), rng, reader_noise),
                         "histo_label": int(stage == 4) if name == "histo" else None})
    return plan


def write_synthetic_cohort(cfg: SynthConfig) -> Path:
    """Write the phantom cohort into `cfg.out` (staged: no partial folder on failure).

    Layout: images/<pid>.nii.gz (int16 HU), masks/<pid>.nii.gz (uint8, 1 = liver), weak.csv,
    histo.csv (columns patient_id,image,liver_mask,weak_label,histo_label; paths relative to the
    CSV), cohort.json (parameters, seed, per-patient stage and confounders), README.md.

    Raises:
        InputError: `cfg.out` exists and is not empty, and `cfg.force` is False.
    """
    plan = plan_cohort(cfg)
    with staged_output_dir(cfg.out, cfg.force) as stage_dir:
        for sub in ("images", "masks"):
            (stage_dir / sub).mkdir()
        for rec in track(plan, desc="synth"):
            rng = np.random.default_rng([cfg.seed, SETS[rec["set"]], rec["index"]])
            params = draw_params(rec["stage"], rng)
            ct, mask = make_phantom(rec["stage"], rng, cfg.size, params=params)
            rec["image"], rec["liver_mask"] = f"images/{rec['patient_id']}.nii.gz", f"masks/{rec['patient_id']}.nii.gz"
            sitk.WriteImage(ct, str(stage_dir / rec["image"]), True)
            sitk.WriteImage(mask, str(stage_dir / rec["liver_mask"]), True)
            liver_slices = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask).any(axis=(1, 2))))
            rec["phantom"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(params).items()
                              if k != "stage"}
            rec["phantom"].update(n_slices=params.n_slices, liver_slices=liver_slices, severity=round(severity(rec["stage"]), 4),
                                  spacing_mm=[round(v, 4) for v in ct.GetSpacing()])
        for name in SETS:
            write_text_atomic(stage_dir / f"{name}.csv", _manifest_text([r for r in plan if r["set"] == name]))
        write_json_atomic(stage_dir / "cohort.json", _cohort_doc(cfg, plan))
        write_text_atomic(stage_dir / "README.md", _readme(cfg))
    return Path(cfg.out)


def _manifest_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r["patient_id"], r["image"], r["liver_mask"], r["weak_label"],
                         "" if r["histo_label"] is None else r["histo_label"]])
    return buf.getvalue()


def _cohort_doc(cfg: SynthConfig, plan: list[dict]) -> dict:
    summary = {}
    for name in SETS:
        rows = [r for r in plan if r["set"] == name]
        true_cls = [int(np.searchsorted([1.5, 3.5], r["stage"])) for r in rows]
        summary[name] = {
            "patients": len(rows),
            "stage_counts": [sum(r["stage"] == k for r in rows) for k in range(5)],
            "weak_label_counts": [sum(r["weak_label"] == k for r in rows) for k in range(3)],
            "weak_misread_fraction": round(float(np.mean([r["weak_label"] != c for r, c in zip(rows, true_cls)])), 4) if rows else None,
        }
        if name == "histo":
            summary[name]["histo_positive"] = sum(r["histo_label"] for r in rows)
    config = to_dict(cfg)
    config.pop("out", None)  # the folder name is not a parameter: same seed -> same bytes anywhere
    config.pop("force", None)
    return {
        "synthetic": True,
        "note": "Synthetic phantoms generated by wsp-cirrhosis synth: NOT patient data.",
        "generator": f"wsp_cirrhosis {__version__}",
        "seed": cfg.seed,
        "config": config,
        "weak_classes": list(WEAK_CLASS_NAMES),
        "summary": summary,
        "patients": [{k: v for k, v in r.items() if k != "index"} for r in plan],
    }


def _readme(cfg: SynthConfig) -> str:
    return f"""# Synthetic phantom cohort: NOT patient data

Written by `wsp-cirrhosis synth` (wsp_cirrhosis {__version__}), seed {cfg.seed}. Every CT here is a
parametric **phantom** of the upper abdomen with a liver mask. It exists to test and benchmark the
pipeline end to end; results on it say nothing about cirrhosis on real CT.

## Files
- `images/<patient_id>.nii.gz`: int16 CT in HU. `masks/<patient_id>.nii.gz`: uint8, 1 = liver.
  Some volumes are stored with flipped x/y and/or z axes; their direction cosines keep the physical
  (LPS) anatomy identical, so use physical space, never raw array order.
- `weak.csv`: {cfg.patients} weak-labelled patients (pretraining); `histo_label` empty.
- `histo.csv`: {cfg.histo_patients} other patients with a histology label (1 = cirrhosis, i.e. stage 4;
  {cfg.cirrhosis_fraction:.0%} positive) and a weak label too.
- `cohort.json`: the parameters, per-patient latent stage, labels and every confounder drawn.

## Labels
- Latent fibrosis stage 0..4. Weak label = a noisy radiological reading binned into
  0 normal (stage 0-1), 1 signs of fibrosis (2-3), 2 cirrhosis (4): stage + N(0, reader noise),
  thresholds 1.5 and 3.5, so misreadings go to the neighbouring class (about 25% at the default).
- Histology label = 1 iff stage == 4. Weak set: the three true classes in equal numbers;
  histology set: {cfg.cirrhosis_fraction:.0%} at stage 4, the rest uniform over stages 0-3.

## What the stage changes (magnitude grows with the stage; visibility depends on the slice position)
- surface nodularity (all levels); heterogeneous parenchyma: septa around regenerative nodules, mottling;
- right-lobe atrophy with caudate and left-lobe hypertrophy (mid and superior liver);
- ascites (stage 3: 30% of patients, stage 4: 75%; perihepatic and paracolic, mostly inferior);
- splenomegaly.

## Confounders, independent of the stage
noise 8-25 HU; HU offset +-20; contrast enhancement (liver 50-120 HU, vessels, spleen, kidneys,
aorta follow it); slice thickness 1.5-5 mm (30-80 slices); in-plane field of view 340-420 mm over
a {cfg.size} x {cfg.size} matrix; body size, fat thickness, position; natural lobe, spleen and
gallbladder sizes; stomach gas; storage orientation (LPS 40%, RAS 30%, LPI 20%, RAI 10%).

## Parameters
- `--patients {cfg.patients}`: weak-labelled patients; `--histo-patients {cfg.histo_patients}`: histology patients.
- `--cirrhosis-fraction {cfg.cirrhosis_fraction}`: share of stage-4 patients in the histology set.
- `--size {cfg.size}`: in-plane matrix; `--seed {cfg.seed}`: every draw derives from it
  (same seed, same files byte for byte).
- `--reader-noise {cfg.reader_noise}`: standard deviation of the weak reading around the stage.
"""


def run_synth(cfg: SynthConfig) -> int:
    """`wsp-cirrhosis synth`: write the cohort and log a one-line summary; returns 0."""
    start = time.monotonic()
    out = write_synthetic_cohort(cfg)
    positives = sum(r["histo_label"] == 1 for r in plan_cohort(cfg))
    log.info("wrote %d weak + %d histology phantoms (%d with cirrhosis) to %s in %.1f s; synthetic, not patient data",
             cfg.patients, cfg.histo_patients, positives, out, time.monotonic() - start)
    return 0
