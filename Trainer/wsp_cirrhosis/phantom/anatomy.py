"""Synthetic abdominal CT phantoms with liver masks: anatomy and rendering.

**These are phantoms, not patient data.** Every volume is drawn from a parametric model of the
upper abdomen: body wall (fat, muscle, ribs), spine and paraspinal muscles, aorta and inferior
vena cava, lung bases and heart above the diaphragm, stomach, spleen, kidneys, gallbladder,
bowel, and a liver made of a right lobe, a left lobe and a caudate lobe whose cross-sections
change along z, with intrahepatic vessels. d is the slice position within the liver
(0 = inferior tip, 1 = dome). A latent fibrosis stage 0..4 acts in one of three ways (`signs`):

- "positional" (default): the stage only decides WHERE a sign sits, never how much of it a
  liver has. The sign is inward-only surface nodularity (the bounding box cannot grow): a
  patient's level (stage/4)^3 of it sits at d 0.25-0.42, and the rest (1 - level) plus a
  stage-independent extra (uniform in [0, DECOY_SPREAD]), scaled by 0.6, sits at the decoy
  position d 0.58-0.75, in every patient. A detector that ignores slice position sees about
  the same nodules in everyone. The notches keep whatever lies next to the liver.
  A caudate-like bulge (with the right lobe shrunk on the same slices so the liver area per
  slice does not change) is built in but switched off (CAUDATE_GAIN = 0): it leaked into the
  random-encoder probe. Heterogeneity, ascites and spleen size are drawn independently of the
  stage. The audit gates (issue 10) are measured at `synth --size 64` (docs/benchmarks/audit.md).
- "global": the earlier phantom (negative control): nodularity everywhere, heterogeneous
  parenchyma, right-lobe atrophy with caudate and left-lobe hypertrophy, ascites and
  splenomegaly all grow with the stage, so whole-liver cues (e.g. the liver fraction of its
  bounding box) give the stage away.
- "none": the positional phantom with the sign level drawn at random: the stage has no effect
  (a null control).

Scanner and patient confounders are drawn independently of the stage: noise, HU calibration
offset, contrast enhancement, slice thickness (so the number of liver slices varies), in-plane
field of view, body size and fat, natural lobe sizes, and the storage orientation of the file
(flipped x/y and/or z, with direction cosines that keep the physical anatomy unchanged).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..config import SYNTH_SIGNS
from .shapes import Grid, bump, column, ellipse_sdf, ellipsoid, paint, random_fields, ribs, window

# storage orientation -> is the canonical LPS array flipped along (x, y, z)? Same anatomy in all four.
ORIENTATIONS: dict[str, tuple[bool, bool, bool]] = {
    "LPS": (False, False, False), "RAS": (True, True, False), "LPI": (False, False, True), "RAI": (True, True, True)}
ORIENTATION_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
SIGNS = SYNTH_SIGNS  # the values synth --signs accepts
# positional signs: d ranges (plateau lo, hi) of the stage's sign and of its decoy, and magnitudes;
# tuned against the audit gates of issue 10 (changing one changes every benchmark on this phantom)
CAUDATE_SIGN_D, CAUDATE_DECOY_D = (0.45, 0.65), (0.74, 0.9)
NODULES_SIGN_D, NODULES_DECOY_D = (0.25, 0.42), (0.58, 0.75)
CAUDATE_GAIN = 0.0       # bulge: caudate radii grow by this many natural caudate radii at level 1 (off: 0.25-0.5
                         # raised the whole-patient random-encoder probe from 0.61 to 0.64-0.69)
AREA_SHARE = 0.8         # share of the bulge's area the right lobe gives up (the lobes overlap a little)
NODULE_DEPTH_MM = 10.0    # inward nodule depth per unit of the nodule field at level 1
NODULE_SCALE_MM = 9.0    # correlation length of the nodule field
# decoy amount per unit of sign (bulge, nodules): the same sign looks bigger on the smaller
# superior slices, so the decoys are scaled until whole-patient cues no longer see the stage
DECOY_SCALE = (1.0, 0.6)
DECOY_SPREAD = 1.5       # stage-independent extra decoy amount, uniform in [0, DECOY_SPREAD]: noise that a
                         # position-blind pooled feature cannot average away
ASCITES_P = 0.25         # positional/none: share of patients with ascites, whatever the stage


def severity(stage: int) -> float:
    """Magnitude of the cirrhosis signs in [0, 1]: convex in the stage, so stage 4 stands out."""
    return (stage / 4.0) ** 1.5


def sign_level(stage: int) -> float:
    """Amount of the positional signs at the stage's positions in [0, 1]: steep, so stage 4 stands out."""
    return (stage / 4.0) ** 3


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
    ascites_mm: float          # thickness of the fluid rim (0 = no ascites); stage-driven in "global" only
    signs: str = "global"      # how the stage shows: a key of SIGNS
    sign_level: float = 0.0    # positional signs: amount at the stage's positions (0..1)
    decoy_level: float = 0.0   # positional signs: extra stage-independent amount at the decoy positions
    heterogeneity: float = 0.0  # positional/none: parenchymal heterogeneity (0..1), stage-independent
    spleen_growth: float = 0.0  # positional/none: splenomegaly (0..1), stage-independent

    @property
    def n_slices(self) -> int:
        total = self.liver_height_mm + self.margin_inferior_mm + self.margin_superior_mm
        return int(total // self.slice_thickness_mm) + 1


def draw_params(stage: int, rng: np.random.Generator, signs: str = "positional") -> PhantomParams:
    """Draw one phantom's parameters; the draws happen in a fixed order whatever the stage.

    `signs` (a key of SIGNS) says how the stage shows; "global" draws exactly what earlier
    versions drew, so its files are unchanged.

    Raises:
        ValueError: `stage` is not in 0..4, or unknown `signs`.
    """
    if stage not in range(5):
        raise ValueError(f"stage {stage}: must be 0..4")
    if signs not in SIGNS:
        raise ValueError(f"signs {signs!r}: choose one of {', '.join(SIGNS)}")
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
    params = PhantomParams(
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
    if signs == "global":
        return params
    # positional / none: the stage only moves signs along the liver; everything else is drawn blind to it
    v = rng.uniform(size=6)
    level = sign_level(stage) if signs == "positional" else sign_level(int(5 * v[0]))  # none: a random stage's
    return dataclasses.replace(
        params, signs=signs, sign_level=level, decoy_level=DECOY_SPREAD * float(v[1]), heterogeneity=float(v[2]),
        spleen_growth=float(v[3]), ascites_mm=(4.0 + 15.0 * float(v[5])) if v[4] < ASCITES_P else 0.0)


def make_phantom(stage: int, rng: np.random.Generator, size: int = 96,
                 params: PhantomParams | None = None, signs: str = "positional") -> tuple[sitk.Image, sitk.Image]:
    """One synthetic abdominal CT and its liver mask (a phantom, not patient data).

    Args:
        stage: latent fibrosis stage 0..4 (4 = cirrhosis).
        rng: source of every random draw (parameters when not given, then texture and noise).
        size: in-plane matrix (size x size voxels over `params.fov_mm`).
        params: fixed parameters (e.g. `dataclasses.replace` of a draw); drawn from `rng` if None.
        signs: how the stage shows when `params` is None (a key of SIGNS).

    Returns:
        (ct, mask): int16 HU and uint8 (1 = liver) images on the same grid, stored in
        `params.orientation`; origin, spacing and direction place them in LPS physical space.

    Raises:
        ValueError: bad stage, or `params.stage` differs from `stage`.
    """
    if params is None:
        params = draw_params(stage, rng, signs)
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


def _render(p: PhantomParams, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(hu float32 (Z, Y, X), liver bool (Z, Y, X)) in canonical LPS storage, k inferior -> superior."""
    g = Grid(p, size)
    pix, nz, H, s, e = g.pix, p.n_slices, p.liver_height_mm, p.body_scale, severity(p.stage)
    positional = p.signs != "global"
    shape = (nz, size, size)
    scales = (6, 14, 4, 15, 15) + ((NODULE_SCALE_MM,) if positional else ())  # global: same draws as before
    fields = random_fields(rng, shape, (p.slice_thickness_mm, pix, pix), scales)
    n_surf, n_low, n_sep, v1, v2 = fields[:5]
    noise = rng.standard_normal(shape, dtype=np.float32)
    enh = p.enhancement
    cax, cay, wall = 128.0 * s, 86.0 * s, 12.0 * s  # abdominal cavity semi-axes, muscle wall
    y_back = cay + wall + 0.5 * p.fat_mm           # flattened back (the patient lies on it)
    X2, Y2 = g.x[None, :], g.y[:, None]

    # --- body wall: constant along z, painted once in 2D
    base = np.full((size, size), -1000.0, np.float32)
    body = np.maximum(ellipse_sdf(X2, Y2, 0, 0, cax + wall + p.fat_mm, cay + wall + p.fat_mm + 10), Y2 - y_back)
    paint(base, body, -100.0, pix)
    muscle = np.maximum(ellipse_sdf(X2, Y2, 0, 0, cax + wall, cay + wall), body + 3)
    paint(base, muscle, 45.0, pix)
    paint(base, np.maximum(np.abs(Y2 - y_back - 12) - 2.5, np.abs(X2) - 0.8 * (cax + p.fat_mm)), 150.0, pix)  # table
    cav = ellipse_sdf(X2, Y2, 0, 0, cax, cay)
    img = np.broadcast_to(base, shape).copy()

    # --- cavity content: fat and bowel loops, gas pockets (3D texture)
    bowel = -100.0 + 135.0 / (1.0 + np.exp(-6.0 * (v1 - 0.3)))  # mostly fat, loops where v1 > 0.3
    bowel = np.where((v2 > 1.8) & (v1 > 0.3), np.float32(-900.0), bowel)
    paint(img, cav[None], bowel, pix)

    # --- liver signed distance (computed first: ascites follows its surface)
    liver_box = (-cax, 0.95 * cax, -cay, cay, 0.0, 1.0)  # the liver stays 3 mm inside the cavity
    (lz, ly, lx), X, Y, _, T = g.box(*liver_box)
    if positional:  # no whole-liver change with the stage: a caudate-like bulge whose position it sets
        f_r, f_l, f_c = p.right_lobe, p.left_lobe, p.caudate
        a_sign, a_decoy = p.sign_level, 1.0 - p.sign_level + p.decoy_level
        bulge = CAUDATE_GAIN * (a_sign * window(T, *CAUDATE_SIGN_D)
                                + DECOY_SCALE[0] * a_decoy * window(T, *CAUDATE_DECOY_D))
    else:
        f_r = p.right_lobe * (1.0 - 0.25 * e)      # right-lobe atrophy: the medial edge retracts
        f_l = p.left_lobe * (1.0 + 0.2 * e)        # left-lobe hypertrophy
        f_c = p.caudate * (1.0 + 0.6 * e)          # caudate hypertrophy
        bulge = np.float32(0.0)
    p_r = bump(T, 0.0, 0.3, 0.72, 1.0)
    rx_r, ry_r = 0.4 * cax * f_r * p_r, 0.75 * cay * (0.6 + 0.4 * f_r) * p_r
    cx_r = -(0.5 + 0.3 * (1 - f_r) + 0.1 * (1 - p_r)) * cax
    p_c = bump(T, 0.4, 0.52, 0.65, 0.82)
    rcx, rcy = 0.13 * cax * (f_c * p_c + bulge), 0.15 * cay * (f_c * p_c + bulge)
    if positional:  # the right lobe gives up the caudate's gain on the same slice, its lateral edge fixed
        gain = AREA_SHARE * (rcx * rcy - 0.13 * cax * 0.15 * cay * (f_c * p_c) ** 2)
        rx_new = np.maximum(rx_r - gain / np.maximum(ry_r, 1.0), 0.3 * rx_r)
        cx_r, rx_r = cx_r - rx_r + rx_new, rx_new
    right = ellipse_sdf(X, Y, cx_r, (0.05 + 0.1 * (0.5 - T)) * cay, rx_r, ry_r)
    p_l = bump(T, 0.35, 0.55, 0.8, 0.98)
    left = ellipse_sdf(X, Y, 0.1 * cax + 0.2 * cax * (f_l - 1), -0.45 * cay, 0.45 * cax * f_l * p_l, 0.24 * cay * f_l * p_l)
    caudate = ellipse_sdf(X, Y, 0.0, -0.12 * cay, rcx, rcy)
    liver_sdf = np.maximum(np.minimum(np.minimum(right, left), caudate), cav[None, ly, lx] + 3.0)
    if positional:  # fine two-sided irregularity in everyone + inward-only nodules (the box cannot grow)
        depth = NODULE_DEPTH_MM * (a_sign * window(T, *NODULES_SIGN_D)
                                   + DECOY_SCALE[1] * a_decoy * window(T, *NODULES_DECOY_D))
        liver_sdf += 0.5 * n_surf[lz, ly, lx]
        liver_sdf += depth * np.maximum(fields[5][lz, ly, lx], 0.0)
    else:
        liver_sdf += (0.5 + 3.5 * e) * n_surf[lz, ly, lx]  # surface nodularity

    # --- ascites: perihepatic rim (mostly inferior) and paracolic gutters (inferior slices)
    if p.ascites_mm > 0:
        (az, _, _), _, _, _, T = g.box(-np.inf, np.inf, -np.inf, np.inf, -np.inf, 1.0)
        peri = np.full((az.stop - az.start, size, size), 1e3, np.float32)
        liver_t = T[lz.start - az.start:lz.stop - az.start]
        peri[lz.start - az.start:lz.stop - az.start, ly, lx] = liver_sdf - p.ascites_mm * np.clip((0.75 - liver_t) / 0.5, 0.15, 1.0)
        gutter = -cav[None] - 0.8 * p.ascites_mm * np.clip((0.45 - T) / 0.3, 0.0, 1.0)
        paint(img[az], np.maximum(np.minimum(peri, gutter), cav[None]), 8.0, pix)

    # --- lung bases (cavity above the diaphragm) and heart
    (qz, _, _), X, Y, Z, _ = g.box(-np.inf, np.inf, -np.inf, np.inf, 0.7)
    r2 = np.clip((X / cax) ** 2 + (Y / cay) ** 2, 0.0, 1.0)
    dome = H * (0.72 + 0.27 * (1 - r2) + 0.25 * np.clip(-Y / cay, 0.0, 1.0))  # recesses low behind, high in front
    paint(img[qz], np.maximum(cav[None], dome - Z), -850.0, pix)
    ellipsoid(img, g, (0.15 * cax, -0.25 * cay, 1.3 * H), (0.45 * cax, 0.5 * cay, 0.35 * H), 40 + 150 * enh)

    # --- abdominal organs (the liver, painted later, indents them)
    gas_y = -0.25 * cay - 0.3 * cay * (1 - 2 * p.stomach_gas)
    ellipsoid(img, g, (0.42 * cax, -0.25 * cay, 0.78 * H), (0.28 * cax, 0.3 * cay, 0.28 * H), 35.0, cav)
    ellipsoid(img, g, (0.42 * cax, -0.25 * cay, 0.78 * H), (0.28 * cax - 3, 0.3 * cay - 3, 0.28 * H - 3), 15.0, cav,
               gas=(gas_y, -950.0))
    f_s = p.spleen * (1.0 + 0.35 * (p.spleen_growth if positional else e))  # splenomegaly
    ellipsoid(img, g, (0.62 * cax, 0.4 * cay, 0.62 * H), (0.2 * cax * f_s, 0.32 * cay * f_s, 0.22 * H * f_s),
               45 + 80 * enh, cav)
    for side, zc in ((-1, 0.05), (1, 0.15)):
        kidney = (side * 0.5 * cax, 0.5 * cay, zc * H)
        ellipsoid(img, g, kidney, (24 * s, 22 * s, 50 * s), 35 + 160 * enh, cav)
        ellipsoid(img, g, (kidney[0] - side * 8 * s, kidney[1], kidney[2]), (9 * s, 8 * s, 25 * s), -40.0)

    # --- spine and paraspinal muscles (constant along z; only their bounding box is touched)
    y_vb = 0.42 * cay
    for cx, cy, rx, ry, hu in ((-36 * s, y_vb + 48 * s, 28 * s, 24 * s, 50.0), (36 * s, y_vb + 48 * s, 28 * s, 24 * s, 50.0),
                               (0, y_vb + 38 * s, 22 * s, 10 * s, 350.0), (0, y_vb + 55 * s, 5 * s, 16 * s, 400.0),
                               (0, y_vb, 20 * s, 20 * s, 600.0), (0, y_vb, 16 * s, 16 * s, 220.0),
                               (0, y_vb + 28 * s, 8 * s, 8 * s, 20.0)):
        column(img, g, cx, cy, rx, ry, hu, body)
    ribs(img, g, X2, Y2, cav, muscle, cax, cay, y_back, s, H)

    # --- liver parenchyma: septa around regenerative nodules + mottling, then vessels
    h = p.heterogeneity if positional else e
    tex = (p.liver_hu + (2.0 + 10.0 * h) * n_low[lz, ly, lx]
           - 35.0 * h * (np.exp(-(n_sep[lz, ly, lx] / 0.35) ** 2) - 0.2425))  # 0.2425 = its mean: HU level unchanged
    view = img[lz, ly, lx]
    # The nodule notches keep whatever lies next to the liver at that level. Filling them with fat
    # (an earlier version) gave every notch a dark rim that a random-init encoder read at any
    # height (probe AUC 0.724 with it, 0.686 without, one cohort: docs/benchmarks/audit.md).
    paint(view, liver_sdf, tex, pix)
    _, X, Y, _, T = g.box(*liver_box)
    depth = np.clip(-liver_sdf / 25.0, 0.0, 1.0)    # vessels taper towards the capsule
    vessel = np.sqrt(v1[lz, ly, lx] ** 2 + v2[lz, ly, lx] ** 2) * (15.0 / 1.22) - (1.0 + 3.0 * depth)
    ivc_x, ivc_y = -24 * s, y_vb - 28 * s
    for tx, ty in ((-0.75, 0.1), (-0.3, -0.45), (0.25, -0.5)):  # hepatic veins: from the IVC down and out
        f = np.clip((0.92 - T) / 0.4, 0.0, 1.0)
        hv = ellipse_sdf(X, Y, ivc_x + f * (tx * cax - ivc_x), ivc_y + f * (ty * cay - ivc_y), 5.0 - 2.5 * f, 5.0 - 2.5 * f)
        vessel = np.minimum(vessel, np.where((T > 0.5) & (T < 0.92), hv, np.float32(1e3)))
    paint(view, np.maximum(vessel, liver_sdf), 40 + 150 * enh, pix)
    liver = np.zeros(shape, bool)
    liver[lz, ly, lx] = liver_sdf < 0

    # --- structures that cut into the liver mask: gallbladder, portal vein, IVC; aorta
    cuts = [ellipsoid(img, g, (-0.22 * cax, -0.42 * cay, 0.18 * H), (0.1 * cax * p.gallbladder, 0.13 * cay * p.gallbladder,
                                                                       0.2 * H * p.gallbladder), 10.0),
            ellipsoid(img, g, (-0.2 * cax, -0.08 * cay, 0.43 * H), (0.2 * cax, 7.0 * s, 8.0 * s), 40 + 150 * enh),
            column(img, g, ivc_x, ivc_y, 12 * s, 11 * s, 40 + 140 * enh, body),
            column(img, g, 14 * s, y_vb - 30 * s, 11 * s, 11 * s, 45 + 220 * enh, body)]  # aorta
    for where, sdf in cuts:
        if sdf is not None:
            liver[where] &= ~(sdf < 0)

    img += p.noise_hu * noise + p.hu_offset
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16), liver
