"""Drawing primitives of the synthetic phantoms: random fields, signed distances, painting.

Used by anatomy.py; everything works on canonical (z, y, x) LPS arrays in body coordinates (mm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: anatomy.py imports this module
    from .anatomy import PhantomParams


def window(t: np.ndarray, lo: float, hi: float, ramp: float = 0.05) -> np.ndarray:
    """Smooth plateau along t: 0 outside [lo - ramp, hi + ramp], 1 on [lo, hi], cosine ramps between."""
    up = np.clip((t - lo + ramp) / ramp, 0.0, 1.0)
    down = np.clip((hi + ramp - t) / ramp, 0.0, 1.0)
    return (np.sin(0.5 * np.pi * np.minimum(up, down)) ** 2).astype(np.float32)


def random_fields(rng: np.random.Generator, shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
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


def ellipse_sdf(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an axis-aligned ellipse; radius 0 = absent."""
    rxs, rys = np.maximum(rx, 0.05), np.maximum(ry, 0.05)
    rho = np.sqrt(((x - cx) / rxs) ** 2 + ((y - cy) / rys) ** 2)
    return np.where(np.minimum(rx, ry) > 0.05, (rho - 1.0) * np.sqrt(rxs * rys), np.float32(1e3))


def bump(t: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    """Lobe profile along t: 0 below a, rises to 1 at b, 1 until c, dome-shaped fall to 0 at d."""
    rise = np.sin(0.5 * np.pi * np.clip((t - a) / (b - a), 0.0, 1.0)) ** 0.7
    fall = np.sqrt(np.clip(1.0 - np.clip((t - c) / (d - c), 0.0, None) ** 2, 0.0, 1.0))
    return (rise * fall).astype(np.float32)


def paint(img: np.ndarray, sdf: np.ndarray, hu, pix: float) -> None:
    """Blend `hu` into the view `img` with each voxel's coverage by sdf < 0 (partial volume)."""
    img += np.clip(0.5 - sdf / pix, 0.0, 1.0) * (hu - img)


class Grid:
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


def ellipsoid(img, g: Grid, centre, radii, hu, clip_sdf=None, gas=None):
    """Paint an axis-aligned ellipsoid (clipped to `clip_sdf` (H, W) if given); return (index, sdf)."""
    (cx, cy, cz), (rx, ry, rz) = centre, radii
    if min(rx, ry, rz) <= 0:
        return None, None
    (_, sy, sx), X, Y, _, _ = g.box(cx - rx, cx + rx, cy - ry, cy + ry)
    sz = slice(*(int(i) for i in np.searchsorted(g.z, [cz - rz, cz + rz])))
    Z = g.z[sz][:, None, None]
    prof = np.sqrt(np.clip(1.0 - ((Z - cz) / rz) ** 2, 0.0, 1.0))
    sdf = ellipse_sdf(X, Y, cx, cy, rx * prof, ry * prof)
    if clip_sdf is not None:
        sdf = np.maximum(sdf, clip_sdf[None, sy, sx])
    paint(img[sz, sy, sx], sdf, hu, g.pix)
    if gas is not None:  # supine: gas floats anteriorly (towards -y) above a level
        paint(img[sz, sy, sx], np.maximum(sdf + 1.0, Y - gas[0]), gas[1], g.pix)
    return (sz, sy, sx), sdf


def column(img, g: Grid, cx, cy, rx, ry, hu, body):
    """Paint an elliptic cylinder along z inside the body; return (index, sdf) over all slices."""
    (_, sy, sx), X, Y, _, _ = g.box(cx - rx, cx + rx, cy - ry, cy + ry)
    sdf = np.maximum(ellipse_sdf(X[0], Y[0], cx, cy, rx, ry), body[sy, sx])
    paint(img[:, sy, sx], sdf[None], hu, g.pix)
    return (slice(None), sy, sx), np.broadcast_to(sdf, (img.shape[0], *sdf.shape))


def ribs(img, g: Grid, X2, Y2, cav, muscle, cax, cay, y_back, s, H) -> None:
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
