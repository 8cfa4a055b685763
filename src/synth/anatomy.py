"""One study's spine as a small anatomical model, rasterised with soft edges into a voxel grid per sequence."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.constants import CONDITIONS, LEVELS, label_column

# Tissue intensities (T1, T2) on a 0..1 scale.
TISSUE = {
    "muscle": (0.35, 0.25),
    "fat": (0.90, 0.55),
    "marrow": (0.62, 0.45),
    "disc": (0.38, 0.72),
    "bone": (0.50, 0.32),
    "ligament": (0.22, 0.16),
    "csf": (0.15, 0.95),
    "nerve": (0.32, 0.30),
}


# STIR: T2 contrast with fat (and fatty marrow) suppressed.
STIR = {"muscle": 0.28, "fat": 0.07, "marrow": 0.16, "disc": 0.70, "bone": 0.22, "ligament": 0.14, "csf": 0.95,
        "nerve": 0.33}
SEQUENCES = ("t1", "t2", "stir")


@dataclass
class Anatomy:
    """One study's spine in its local frame (mm): level heights, lordosis and structure sizes."""

    scale: float
    level_gap: float
    lordosis: float
    severity: dict[str, float]  # label column -> latent severity
    # Discs above L1/L2 (T12/L1, T11/T12, ...) when the anatomy is extended: each one's severity per structure
    # (canal, left/right foramen, left/right recess), all in the normal range.
    extra_discs: list[dict[str, float]] = field(default_factory=list)
    sacrum: bool = False  # render S2 and S3 below S1

    @property
    def disc_z(self) -> np.ndarray:
        return (2 - np.arange(5)) * self.level_gap  # L1/L2 at the top, L3/L4 at z = 0

    def f(self, z):
        """AP offset of the vertebral bodies at height z (lordosis: mid-lumbar most anterior)."""
        return -self.lordosis * (1 - (np.asarray(z) / (2.8 * self.level_gap)) ** 2)

    @property
    def body_half(self) -> tuple[float, float]:
        return 21.0 * self.scale, 16.0 * self.scale

    @property
    def canal(self) -> tuple[float, float]:
        return 11.0 * self.scale, 7.5 * self.scale  # LR and AP semi-axes

    def canal_y(self, z):
        return self.f(z) + self.body_half[1] + 2.5 + self.canal[1]

    def structure_point(self, condition: str, level_index: int) -> np.ndarray:
        """Local-frame point an annotator would click for a condition at a level."""
        return self.point_at(condition, self.disc_z[level_index])

    def point_at(self, condition: str, z: float) -> np.ndarray:
        """Local-frame point of a condition's structure at the disc at height z."""
        r_lr, r_ap = self.canal
        if condition == "Spinal Canal Stenosis":
            return np.array([0.0, self.canal_y(z), z])
        side = 1.0 if condition.startswith("Left") else -1.0  # patient left is +x
        if "Foraminal" in condition:
            return np.array([side * (r_lr + 8.0 * self.scale), self.canal_y(z) - 2.0, z + 3.0 * self.scale])
        return np.array([side * (r_lr + 1.0), self.canal_y(z) + 0.3 * r_ap, z])


def tissue_table(rng: np.random.Generator | None = None, contrast: float = 0.0) -> dict[str, dict[str, float]]:
    """Tissue -> sequence -> intensity; with contrast > 0 each value is scaled by a per-study log-normal factor."""
    table = {t: {"t1": v[0], "t2": v[1], "stir": STIR[t]} for t, v in TISSUE.items()}
    if rng is not None and contrast > 0:
        table = {t: {q: float(np.clip(v * np.exp(rng.normal(0, contrast)), 0.02, 1.0)) for q, v in seq.items()}
                 for t, seq in table.items()}
    return table


class Grid:
    """Voxel grid over the study-local frame holding one intensity volume per sequence, painted with soft edges."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, voxel: float, sequences: tuple[str, ...] = ("t1", "t2"),
                 tissue: dict[str, dict[str, float]] | None = None):
        self.lo = np.asarray(lo, dtype=float)
        self.voxel = voxel
        self.shape = tuple(int(np.ceil((h - low) / voxel)) + 1 for low, h in zip(self.lo, hi))
        self.volumes = {q: np.zeros(self.shape, dtype=np.float32) for q in sequences}
        self.tissue = tissue or tissue_table()
        self._copies: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def in_order(self, volume: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
        """`volume` with its axes in `order`, contiguous in memory (made once per volume and order; the volumes
        are finished painting before any slice is cut)."""
        if order == tuple(range(volume.ndim)):
            return volume
        key = (id(volume), order)
        if key not in self._copies:
            self._copies[key] = np.ascontiguousarray(volume.transpose(order))
        return self._copies[key]

    @property
    def t1(self) -> np.ndarray:
        return self.volumes["t1"]

    @property
    def t2(self) -> np.ndarray:
        return self.volumes["t2"]

    def axes(self, box_lo, box_hi):
        """Index slices and coordinate vectors (broadcastable) of the voxels inside a box."""
        i0 = np.clip(np.floor((np.asarray(box_lo) - self.lo) / self.voxel).astype(int), 0, self.shape)
        i1 = np.clip(np.ceil((np.asarray(box_hi) - self.lo) / self.voxel).astype(int) + 1, 0, self.shape)
        sl = tuple(slice(a, b) for a, b in zip(i0, i1))
        x = self.lo[0] + np.arange(i0[0], i1[0]) * self.voxel
        y = self.lo[1] + np.arange(i0[1], i1[1]) * self.voxel
        z = self.lo[2] + np.arange(i0[2], i1[2]) * self.voxel
        return sl, x[:, None, None], y[None, :, None], z[None, None, :]

    def paint(self, sl, alpha: np.ndarray, tissue: str) -> None:
        """Blend `tissue` into every sequence's volume inside the box `sl` with occupancy `alpha` (in place, one
        temporary: the volumes are the generator's largest arrays)."""
        a = np.clip(alpha, 0.0, 1.0).astype(np.float32)
        for q, volume in self.volumes.items():
            box = volume[sl]
            change = np.subtract(np.float32(self.tissue[tissue][q]), box)
            change *= a
            box += change

    def soft(self, distance: np.ndarray) -> np.ndarray:
        """Occupancy from a signed distance in mm (negative inside), one voxel of anti-aliasing."""
        return np.clip(0.5 - distance / self.voxel, 0.0, 1.0)

    def ellipsoid(self, center, radii, tissue: str, power: float = 2.0) -> None:
        center, radii = np.asarray(center, float), np.maximum(np.asarray(radii, float), 1e-3)
        sl, x, y, z = self.axes(center - radii - 2, center + radii + 2)
        if any(s.stop <= s.start for s in sl):
            return
        qx, qy, qz = (x - center[0]), (y - center[1]), (z - center[2])
        rho = (np.abs(qx / radii[0]) ** power + np.abs(qy / radii[1]) ** power + np.abs(qz / radii[2]) ** power) ** (
            1.0 / power
        )
        dist = np.sqrt(qx**2 + qy**2 + qz**2)
        sd = dist * (1.0 - 1.0 / np.maximum(rho, 1e-6))  # distance to the surface along the ray from the centre
        self.paint(sl, self.soft(sd), tissue)


def render_anatomy(anat: Anatomy, voxel: float, sequences: tuple[str, ...] = ("t1", "t2"),
                   tissue: dict[str, dict[str, float]] | None = None) -> Grid:
    """Rasterise one study's spine into one intensity volume per sequence."""
    gap, zs = anat.level_gap, anat.disc_z
    above, below = len(anat.extra_discs), 2 if anat.sacrum else 0
    lo = np.array([-100.0, -110.0, zs[-1] - (1.5 + below) * gap - 30])
    hi = np.array([100.0, 85.0, zs[0] + (1.5 + above) * gap + 30])
    g = Grid(lo, hi, voxel, sequences, tissue)
    # Body outline: subcutaneous fat ring around muscle. It does not change along z: painted on a grid one voxel
    # deep, then copied along z (the volumes are empty before it, so the values are what painting them gives).
    layer = Grid(lo, np.array([hi[0], hi[1], lo[2]]), voxel, sequences, tissue)
    sl, x, y, _ = layer.axes(lo, hi)
    outline = np.sqrt((x / 96.0) ** 2 + ((y + 12.0) / 92.0) ** 2)
    layer.paint(sl, layer.soft((outline - 1.0) * 92.0), "fat")
    layer.paint(sl, layer.soft((outline - 0.87) * 92.0), "muscle")
    for q, volume in g.volumes.items():
        volume[...] = layer.volumes[q]
    paint_bones(g, anat, lo, hi)
    discs = disc_severities(anat)
    for zk, sev in discs:  # each disc with a posterior bulge that grows with canal stenosis
        wb, db = anat.body_half
        g.ellipsoid([0, anat.f(zk), zk], [wb, db, 4.5 * anat.scale], "disc", power=3.0)
        g.ellipsoid([0, anat.f(zk) + db * 0.6, zk], [wb * 0.55, db * 0.4 + 1.3 * anat.canal[1] * sev["canal"],
                                                      4.5 * anat.scale], "disc")
    paint_canal(g, anat, discs, lo, hi)
    for zk, sev in discs:
        paint_foramina_and_recesses(g, anat, zk, sev)
    return g


def extra_disc_z(anat: Anatomy) -> list[float]:
    """Heights of the discs above L1/L2 (extended anatomy), top to bottom: T11/T12, T12/L1."""
    above = len(anat.extra_discs)
    return [anat.disc_z[0] + (above - i) * anat.level_gap for i in range(above)]


def paint_bones(g: Grid, anat: Anatomy, lo: np.ndarray, hi: np.ndarray) -> None:
    """Vertebral bodies (T11, T12 when extended) L1..L5 and S1 between the discs (then S2, S3), posterior
    elements and spinous processes."""
    gap, zs, s = anat.level_gap, anat.disc_z, anat.scale
    wb, db = anat.body_half
    r_ap = anat.canal[1]
    above, below = len(anat.extra_discs), 2 if anat.sacrum else 0
    centers = np.concatenate([[z0 + gap / 2 for z0 in extra_disc_z(anat)], [zs[0] + gap / 2], zs - gap / 2])
    half_h = gap / 2 - 4.5 * s - 0.5
    for k, zc in enumerate(centers):
        grow = 1.15 if k == len(centers) - 1 else 1.0
        g.ellipsoid([0, anat.f(zc), zc], [wb * grow, db * grow, half_h], "marrow", power=4.0)
    for i in range(below):  # fused sacral segments, tilting back and narrowing
        zc = zs[-1] - gap / 2 - (i + 1) * 0.8 * gap
        g.ellipsoid([0, anat.f(zc) + 6.0 * (i + 1), zc], [wb * (1.05 - 0.2 * i), db * (1.0 - 0.15 * i), 0.4 * gap],
                    "marrow", power=4.0)
    # Posterior elements (laminae, pedicles, facets) as a bone block following the curve.
    sl, x, y, z = g.axes([-26 * s, -60, lo[2]], [26 * s, 80, hi[2]])
    yc = anat.canal_y(z)
    inside_z = np.clip((z - (zs[-1] - (1 + below) * gap)) * (zs[0] + (1 + above) * gap - z), -1, 1) > 0
    block = (np.abs(x) < 26 * s) & (y > yc - r_ap - 3) & (y < yc + r_ap + 14 * s) & inside_z
    g.paint(sl, block.astype(np.float32), "bone")
    for zc in centers[:-1]:  # spinous processes
        g.ellipsoid([0, anat.canal_y(zc) + r_ap + 30 * s, zc], [3.5 * s, 20 * s, 10 * s], "bone")


def disc_severities(anat: Anatomy) -> list[tuple[float, dict[str, float]]]:
    """Every disc, top to bottom: its height and its severity per structure (canal, foramina, recesses)."""
    discs = [(z0, sev) for z0, sev in zip(extra_disc_z(anat), anat.extra_discs)]
    for k, zk in enumerate(anat.disc_z):
        sev = {name: anat.severity[label_column(name, LEVELS[k])] for name in CONDITIONS}
        discs.append((zk, {"canal": sev["Spinal Canal Stenosis"],
                           **{f"{side} foramen": sev[f"{side} Neural Foraminal Narrowing"] for side in ("Left", "Right")},
                           **{f"{side} recess": sev[f"{side} Subarticular Stenosis"] for side in ("Left", "Right")}}))
    return discs


def paint_canal(g: Grid, anat: Anatomy, discs: list, lo: np.ndarray, hi: np.ndarray) -> None:
    """Spinal canal CSF tube; at each disc the anterior wall moves back and the posterior wall (ligamentum
    flavum) forward in proportion to that level's spinal canal severity."""
    r_lr, r_ap = anat.canal
    sl, x, y, z = g.axes([-r_lr - 2, -80, lo[2]], [r_lr + 2, 80, hi[2]])
    front = np.zeros_like(z)
    back = np.zeros_like(z)
    for zk, sev in discs:
        bump = np.exp(-0.5 * ((z - zk) / (4.5 * anat.scale)) ** 2)
        front = front + 1.25 * r_ap * sev["canal"] * bump
        back = back + 0.45 * r_ap * sev["canal"] * bump
    yc = anat.canal_y(z)
    y0, y1 = yc - r_ap + front, yc + r_ap - back
    cy, ry = (y0 + y1) / 2, np.maximum((y1 - y0) / 2, 0.2)
    rho = np.sqrt((x / r_lr) ** 2 + ((y - cy) / ry) ** 2)
    g.paint(sl, g.soft((rho - 1.0) * np.minimum(ry, r_lr)), "csf")


def paint_foramina_and_recesses(g: Grid, anat: Anatomy, zk: float, sev: dict[str, float]) -> None:
    """Both neural foramina and lateral recesses of the disc at height zk."""
    s = anat.scale
    for side, name in ((1.0, "Left"), (-1.0, "Right")):
        # Neural foramen: fat-filled ovoid with the exiting nerve root; it closes with severity.
        sev_f = sev[f"{name} foramen"]
        p = anat.point_at(f"{name} Neural Foraminal Narrowing", zk)
        rz = 6.5 * s * (1 - 0.72 * sev_f)
        g.ellipsoid(p, [4.0 * s, 4.5 * s * (1 - 0.3 * sev_f), rz], "fat")
        g.ellipsoid(p + [0, -0.5, 0.45 * rz], [1.6 * s, 1.6 * s, 1.6 * s * (1 - 0.4 * sev_f)], "nerve")
        # Lateral recess (subarticular zone): a CSF pocket that the facet and ligament fill with severity.
        sev_s = sev[f"{name} recess"]
        q = anat.point_at(f"{name} Subarticular Stenosis", zk)
        g.ellipsoid(q, [4.0 * s, 3.2 * s, 7.0 * s], "csf")
        g.ellipsoid(q + [side * 1.5, 2.2, 0], [0.8 + 4.6 * sev_s * s, 0.8 + 4.0 * sev_s * s, 6.0 * s], "ligament")
