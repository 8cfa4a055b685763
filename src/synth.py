"""Synthetic RSNA-format lumbar MRI dataset with planted graded pathology and a known optimum.

`python -m src.synth --out input/synth --studies 200 --test-studies 40 --seed 0`

Each study is a small anatomical model (vertebrae, discs, spinal canal, neural foramina, lateral recesses)
rasterised with soft edges into a 1 mm voxel grid in a study-local frame (x: patient left, y: posterior,
z: head), then resampled into real DICOM series (Sagittal T1, Sagittal T2/STIR, one or more Axial T2)
with patient-specific tilt, position, field of view, pixel spacing, slice count and intensity.

Every (condition, level) has a latent severity s in [0, 1] that sets how much the structure is narrowed.
The written label is drawn from p(label | s), an ordinal logistic model (readers disagree near the
thresholds), so no model can score 0. {split}_oracle.csv holds the Bayes-optimal submission: p(label | s)
reweighted by the metric's class weights 1/2/4 (the minimiser of the expected weighted log loss). The joint
label pattern of each study is copied from a row of the real train.csv when one is given (--patterns).

`--variety real` turns on the acquisition variety of real lumbar MRI (see VARIETIES): the anatomy beyond
L1-S1 that wide fields of view show (T11, T12 and the sacrum), instance numbers against slice position in
both sagittal and axial series, rectangular matrices and fields of view, anisotropic pixels, a wide range of
matrix sizes, slice counts and thicknesses, scanner contrast, gamma, bias field and noise, STIR fat
suppression, several sagittal series, and missing series and coordinates at the real rates. The default
(`--variety default`) is the embedded benchmark, unchanged.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000Lossless, ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid
from pydicom.valuerep import DSfloat
from scipy.ndimage import gaussian_filter, map_coordinates

from . import geometry
from .constants import (
    AXIAL_T2,
    CONDITION_SERIES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVELS,
    REAL_CLASS_FREQUENCIES,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SAMPLE_WEIGHTS,
    SEVERITIES,
    TARGETS,
    label_column,
    row_id,
)
from .parallel import progress_map
from .paths import DEFAULT_PATTERNS, SYNTH_DIR
from .tables import load_train, solution_frame, submission_row_ids

# Tissue intensities (T1, T2) on a 0..1 scale.
LATENT_COLUMNS = [
    "row_id", "study_id", "condition", "level", "severity", "label", *(f"p_{t}" for t in TARGETS), "px", "py", "pz"
]
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

# Measured on the real train CSVs (../shared/rsna2024, 1,975 studies; tests/test_synth.py checks them):
# axial T2 series per study 1/2/3/4 in 1640/306/28/1 studies; Sagittal T1 missing in 2 and doubled in 7,
# Sagittal T2/STIR missing in 1; 29 of 48,803 labelled rows (in 3 studies) without a coordinate.
REAL_AXIAL_SERIES = (1640, 306, 28, 1)
REAL_SAGITTAL_COUNTS = {SAGITTAL_T1: (2, 1966, 7), SAGITTAL_T2: (1, 1974, 0)}  # studies with 0, 1, 2 series
REAL_STUDIES_WITHOUT_SOME_COORDINATES = 3
REAL_STUDIES = 1975


def _rates(counts) -> tuple[float, ...]:
    total = float(sum(counts))
    return tuple(c / total for c in counts)


@dataclass(frozen=True)
class Variety:
    """How much studies and series differ in anatomy coverage, geometry, size and intensity."""

    name: str = "default"
    extended_anatomy: bool = False  # render T11, T12, their discs and the sacrum beyond L1-S1
    sag_size: tuple[float, ...] = (1.0, 1.25)  # matrix size as a factor of image_size, one drawn per series
    axial_size: tuple[float, ...] = (0.75, 1.0)
    sag_fov: tuple[float, float] = (190.0, 240.0)  # mm
    axial_fov: tuple[float, float] = (150.0, 200.0)
    sag_centre_z: tuple[float, float] = (-20.0, -4.0)  # field centre along the spine, mm from L3/L4 (+ head)
    sag_centre_keeps_levels: bool = False  # narrow the centre's range so that L1/L2 to L5/S1 stay in the field
    sag_slices: tuple[int, int] | None = None  # None: SynthConfig.sag_slices
    sag_gap: tuple[float, float] = (3.3, 4.2)
    axial_per_level: tuple[int, int] | None = None  # None: SynthConfig.axial_per_level
    p_non_square: float = 0.0  # a rectangular matrix and field of view
    p_anisotropic: float = 0.0  # row and column pixel spacing differ
    p_sag_reversed: float = 0.5  # instance 1 on the patient's left instead of the right
    p_axial_reversed: float = 0.0  # instance 1 at the feet instead of the head
    contrast: float = 0.0  # per-study log-normal spread of each tissue's intensity
    gamma: tuple[float, float] = (1.0, 1.0)  # per-series intensity curve
    bias: tuple[float, float] = (0.12, 0.12)  # bias field strength
    noise: tuple[float, float] | None = None  # None: SynthConfig.noise
    p_stir: float = 0.0  # the Sagittal T2/STIR series is a STIR (fat suppressed)
    sagittal_counts: dict | None = None  # description -> p(0, 1, 2 series); None: SynthConfig.p_missing_series
    axial_series: tuple[float, ...] | None = None  # p(1, 2, ... axial series); None: SynthConfig.p_axial_series
    p_study_missing_coordinates: float = 0.0  # a study whose coordinates lack some levels
    block_offset_mm: float = 1.0  # axial blocks are centred this close to their disc


VARIETIES: dict[str, Variety] = {
    "default": Variety(),
    "real": Variety(
        name="real", extended_anatomy=True, sag_size=(0.75, 1.0, 1.25, 1.5, 2.0), axial_size=(0.75, 1.0, 1.25, 1.5),
        sag_fov=(200.0, 340.0), axial_fov=(140.0, 230.0), sag_centre_z=(-45.0, 25.0), sag_centre_keeps_levels=True,
        sag_slices=(14, 24),
        sag_gap=(3.0, 5.0), axial_per_level=(2, 6), p_non_square=0.35, p_anisotropic=0.15, p_axial_reversed=0.5,
        contrast=0.15, gamma=(0.7, 1.4), bias=(0.05, 0.35), noise=(0.01, 0.07), p_stir=0.3,
        sagittal_counts={k: _rates(v) for k, v in REAL_SAGITTAL_COUNTS.items()},
        axial_series=_rates(REAL_AXIAL_SERIES),
        p_study_missing_coordinates=REAL_STUDIES_WITHOUT_SOME_COORDINATES / REAL_STUDIES, block_offset_mm=3.0,
    ),
}


@dataclass
class SynthConfig:
    """Everything the generator draws from; the defaults are the embedded benchmark."""

    out: Path = SYNTH_DIR
    studies: int = 200
    test_studies: int = 40
    seed: int = 0
    image_size: int = 256  # base rows/columns of an image; series vary around it
    voxel_mm: float = 1.0
    sag_slices: tuple[int, int] = (15, 19)
    axial_per_level: tuple[int, int] = (3, 5)
    thresholds: tuple[float, float] = (0.4, 0.7)  # latent severity where moderate / severe become likely
    reader_noise: float = 0.05  # logistic scale of p(label | s): readers' disagreement near a threshold
    patterns: Path | None = DEFAULT_PATTERNS
    p_missing_series: dict[str, float] = field(
        default_factory=lambda: {SAGITTAL_T1: 0.01, SAGITTAL_T2: 0.005, AXIAL_T2: 0.005}
    )
    p_axial_series: tuple[float, float, float] = (0.83, 0.155, 0.015)  # 1, 2 or 3 axial series (real rates)
    p_missing_coordinate: float = 0.003
    p_compressed: float = 0.06
    p_missing_optional_tags: float = 0.1
    p_rescaled: float = 0.1
    noise: tuple[float, float] = (0.015, 0.035)
    workers: int = 2
    variety: str | Variety = "default"  # a key of VARIETIES, or a Variety

    @property
    def var(self) -> Variety:
        if isinstance(self.variety, Variety):
            return self.variety
        if self.variety not in VARIETIES:
            raise ValueError(f"variety must be one of {sorted(VARIETIES)}, not {self.variety!r}")
        return VARIETIES[self.variety]


# ----------------------------------------------------------------------------------------------------
# Labels


def label_probabilities(severity: np.ndarray, thresholds=(0.4, 0.7), reader_noise: float = 0.05) -> np.ndarray:
    """p(written label | latent severity) as (..., 3): ordinal logistic with two thresholds."""
    s = np.asarray(severity, dtype=float)[..., None]
    t = np.asarray(thresholds, dtype=float)
    above = 1.0 / (1.0 + np.exp(-(s - t) / reader_noise))  # P(label >= moderate), P(label >= severe)
    p = np.concatenate([1 - above[..., :1], above[..., :1] - above[..., 1:], above[..., 1:]], axis=-1)
    return np.clip(p, 0.0, 1.0)


def metric_optimal(p: np.ndarray) -> np.ndarray:
    """Posterior class probabilities -> the prediction minimising the expected 1/2/4-weighted log loss."""
    q = np.asarray(p, dtype=float) * np.asarray(SAMPLE_WEIGHTS)
    return q / q.sum(-1, keepdims=True)


def draw_severities(
    pattern: np.ndarray, rng: np.random.Generator, thresholds=(0.4, 0.7)
) -> np.ndarray:
    """Latent severity per label column, uniform inside the band of the pattern's class (NaN: normal band)."""
    edges = np.array([0.0, thresholds[0], thresholds[1], 1.0])
    cls = np.where(np.isnan(pattern), 0, pattern).astype(int)
    return rng.uniform(edges[cls], edges[cls + 1])


def fallback_patterns(n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent labels per column from the real group marginals, for when no train.csv is at hand."""
    out = np.empty((n, len(LABEL_COLUMNS)))
    for j, col in enumerate(LABEL_COLUMNS):
        group = next(g for g in REAL_CLASS_FREQUENCIES if g in col)
        out[:, j] = rng.choice(3, size=n, p=REAL_CLASS_FREQUENCIES[group])
    return out


# ----------------------------------------------------------------------------------------------------
# Anatomy


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
        self.shape = tuple(int(np.ceil((h - l) / voxel)) + 1 for l, h in zip(self.lo, hi))
        self.volumes = {q: np.zeros(self.shape, dtype=np.float32) for q in sequences}
        self.tissue = tissue or tissue_table()

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
        a = np.clip(alpha, 0.0, 1.0).astype(np.float32)
        for q, volume in self.volumes.items():
            volume[sl] += a * (self.tissue[tissue][q] - volume[sl])

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
    gap = anat.level_gap
    zs = anat.disc_z
    above, below = len(anat.extra_discs), 2 if anat.sacrum else 0
    lo = np.array([-100.0, -110.0, zs[-1] - (1.5 + below) * gap - 30])
    hi = np.array([100.0, 85.0, zs[0] + (1.5 + above) * gap + 30])
    g = Grid(lo, hi, voxel, sequences, tissue)
    s = anat.scale
    wb, db = anat.body_half
    r_lr, r_ap = anat.canal
    disc_h = 4.5 * s

    # Body outline: subcutaneous fat ring around muscle.
    sl, x, y, z = g.axes(lo, hi)
    outline = np.sqrt((x / 96.0) ** 2 + ((y + 12.0) / 92.0) ** 2)
    g.paint(sl, g.soft((outline - 1.0) * 92.0) * np.ones_like(z), "fat")
    g.paint(sl, g.soft((outline - 0.87) * 92.0) * np.ones_like(z), "muscle")

    # Vertebral bodies (T11, T12 when extended) L1..L5 and S1 between the discs (then S2, S3), then the discs.
    extra_z = [zs[0] + (above - i) * gap for i in range(above)]  # top to bottom: T11/T12, T12/L1
    centers = np.concatenate([[z0 + gap / 2 for z0 in extra_z], [zs[0] + gap / 2], zs - gap / 2])
    half_h = gap / 2 - disc_h - 0.5
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

    # Every disc, top to bottom, with its severity per structure.
    discs = [(z0, sev) for z0, sev in zip(extra_z, anat.extra_discs)]
    for k, zk in enumerate(zs):
        sev = {name: anat.severity[label_column(name, LEVELS[k])] for name in CONDITIONS}
        discs.append((zk, {"canal": sev["Spinal Canal Stenosis"],
                           **{f"{side} foramen": sev[f"{side} Neural Foraminal Narrowing"] for side in ("Left", "Right")},
                           **{f"{side} recess": sev[f"{side} Subarticular Stenosis"] for side in ("Left", "Right")}}))

    for zk, sev in discs:
        # Disc with a posterior bulge that grows with canal stenosis.
        g.ellipsoid([0, anat.f(zk), zk], [wb, db, disc_h], "disc", power=3.0)
        g.ellipsoid([0, anat.f(zk) + db * 0.6, zk], [wb * 0.55, db * 0.4 + 1.3 * r_ap * sev["canal"], disc_h], "disc")

    # Spinal canal CSF tube; at each disc level the anterior wall moves back and the posterior wall
    # (ligamentum flavum) forward in proportion to that level's spinal canal severity.
    sl, x, y, z = g.axes([-r_lr - 2, -80, lo[2]], [r_lr + 2, 80, hi[2]])
    front = np.zeros_like(z)
    back = np.zeros_like(z)
    for zk, sev in discs:
        bump = np.exp(-0.5 * ((z - zk) / (4.5 * s)) ** 2)
        front = front + 1.25 * r_ap * sev["canal"] * bump
        back = back + 0.45 * r_ap * sev["canal"] * bump
    yc = anat.canal_y(z)
    y0, y1 = yc - r_ap + front, yc + r_ap - back
    cy, ry = (y0 + y1) / 2, np.maximum((y1 - y0) / 2, 0.2)
    rho = np.sqrt((x / r_lr) ** 2 + ((y - cy) / ry) ** 2)
    g.paint(sl, g.soft((rho - 1.0) * np.minimum(ry, r_lr)), "csf")

    for zk, sev in discs:
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
    return g


# ----------------------------------------------------------------------------------------------------
# Series geometry and rendering


def rotation(rng: np.random.Generator, max_deg: tuple[float, float, float]) -> np.ndarray:
    """Random rotation from small angles about x, y and z (degrees)."""
    ax, ay, az = (np.deg2rad(rng.uniform(-m, m)) for m in max_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SliceSpec:
    """One slice in the study-local frame: top-left pixel centre, row/column directions, spacing, size."""

    position: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns) in mm, as DICOM's PixelSpacing
    rows: int
    cols: int


def plane(center, row_dir, col_dir, fov: float, rows: int, cols: int, aspect: float = 1.0) -> SliceSpec:
    """A slice centred on `center`: fov (mm) spans the longer side; aspect = column / row spacing."""
    spacing = fov / max(rows, cols)
    row_mm, col_mm = spacing, spacing * aspect
    pos = np.asarray(center) - (cols - 1) / 2 * col_mm * row_dir - (rows - 1) / 2 * row_mm * col_dir
    return SliceSpec(pos, np.asarray(row_dir, float), np.asarray(col_dir, float), (row_mm, col_mm), rows, cols)


def matrix(rng: np.random.Generator, cfg: SynthConfig, factors: tuple[float, ...]) -> tuple[int, int, float]:
    """Rows, columns and column/row spacing ratio of one series."""
    v = cfg.var
    rows = int(round(cfg.image_size * rng.choice(factors)))
    cols, aspect = rows, 1.0
    if v.p_non_square and rng.random() < v.p_non_square:
        cols = int(round(rows * rng.choice([0.75, 0.8, 1.25]))) // 2 * 2
    if v.p_anisotropic and rng.random() < v.p_anisotropic:
        aspect = float(rng.uniform(0.8, 1.25))
    return rows, cols, aspect


def sagittal_slices(anat: Anatomy, rng: np.random.Generator, cfg: SynthConfig) -> tuple[list[SliceSpec], float]:
    v = cfg.var
    lo_n, hi_n = v.sag_slices or cfg.sag_slices
    n = int(rng.integers(lo_n, hi_n + 1))
    gap = rng.uniform(*v.sag_gap)
    rows, cols, aspect = matrix(rng, cfg, v.sag_size)
    fov = rng.uniform(*v.sag_fov)
    tilt = rotation(rng, (3, 0, 3))  # series-specific obliquity on top of the study pose
    row_dir, col_dir = tilt @ np.array([0.0, 1.0, 0.0]), tilt @ np.array([0.0, 0.0, -1.0])
    normal = np.cross(row_dir, col_dir)
    z_lo, z_hi = v.sag_centre_z
    mid, half = (z_lo + z_hi) / 2, (z_hi - z_lo) / 2
    if v.sag_centre_keeps_levels:  # every level at least 15 mm inside the field
        reach = fov / 2 - 2 * anat.level_gap - 15
        lo, hi = max(mid - half, -reach), min(mid + half, reach)
        mid, half = (lo + hi) / 2, max((hi - lo) / 2, 0.0)
    center = np.array([rng.uniform(-3, 3), anat.f(0) + 25 + rng.uniform(-8, 8), mid + rng.uniform(-half, half)])
    offsets = (np.arange(n) - (n - 1) / 2) * gap
    if rng.random() < v.p_sag_reversed:
        offsets = offsets[::-1]  # instance 1 on the patient's left in some series, right in others
    return [plane(center + o * normal, row_dir, col_dir, fov, rows, cols, aspect) for o in offsets], gap


def axial_slices(
    anat: Anatomy, rng: np.random.Generator, cfg: SynthConfig, levels: list[int]
) -> tuple[list[SliceSpec], float]:
    """Either one contiguous stack over the levels or a tilted block of a few slices per disc."""
    v = cfg.var
    rows, cols, aspect = matrix(rng, cfg, v.axial_size)
    fov = rng.uniform(*v.axial_fov)
    zs = anat.disc_z[levels]
    specs: list[SliceSpec] = []
    gap = rng.uniform(3.0, 4.0)
    y_center = anat.canal_y(0) - 5 + rng.uniform(-8, 8)
    x_center = rng.uniform(-6, 6)
    if rng.random() < 0.5:
        tilt = rotation(rng, (5, 2, 2))
        row_dir, col_dir = tilt @ np.array([1.0, 0, 0]), tilt @ np.array([0, 1.0, 0])
        normal = np.cross(row_dir, col_dir)
        top, bottom = zs.max() + 14, zs.min() - 14
        gap = rng.uniform(3.5, 5.0)
        n = int((top - bottom) / gap) + 1
        for i in range(n):
            z = top - i * gap
            specs.append(plane(np.array([x_center, y_center, 0]) + z * normal, row_dir, col_dir, fov, rows, cols, aspect))
    else:
        lo_n, hi_n = v.axial_per_level or cfg.axial_per_level
        per_level = int(rng.integers(lo_n, hi_n + 1))
        for zk in zs:
            # Each block is angled to its disc, so the series holds several orientation groups.
            tilt = rotation(rng, (7, 2, 1))
            row_dir, col_dir = tilt @ np.array([1.0, 0, 0]), tilt @ np.array([0, 1.0, 0])
            normal = np.cross(row_dir, col_dir)
            centre = np.array([x_center, y_center, zk]) + rng.uniform(-v.block_offset_mm, v.block_offset_mm) * normal
            for o in (np.arange(per_level) - (per_level - 1) / 2)[::-1] * gap:
                specs.append(plane(centre + o * normal, row_dir, col_dir, fov, rows, cols, aspect))
    if v.p_axial_reversed and rng.random() < v.p_axial_reversed:
        specs = specs[::-1]  # instance 1 at the feet
    return specs, gap


def render_slice(grid: Grid, volume: np.ndarray, spec: SliceSpec, thickness: float) -> np.ndarray:
    """Sample the local-frame volume on one slice, averaging three depths across the slice thickness."""
    jj, ii = np.mgrid[0 : spec.rows, 0 : spec.cols]
    row_mm, col_mm = spec.spacing
    if row_mm == col_mm:  # the default benchmark's images, computed exactly as they always were
        pts = spec.position + (ii[..., None] * spec.row_dir + jj[..., None] * spec.col_dir) * row_mm
    else:
        pts = spec.position + ii[..., None] * col_mm * spec.row_dir + jj[..., None] * row_mm * spec.col_dir
    normal = np.cross(spec.row_dir, spec.col_dir)
    out = np.zeros((spec.rows, spec.cols), dtype=np.float32)
    for depth in (-thickness / 3, 0.0, thickness / 3):
        idx = ((pts + depth * normal - grid.lo) / grid.voxel).reshape(-1, 3).T
        out += map_coordinates(volume, idx, order=1, cval=0.0, mode="constant").reshape(out.shape)
    return out / 3


def finish_image(image: np.ndarray, rng: np.random.Generator, noise: float, gain: float, bias_strength: float = 0.12,
                 gamma: float = 1.0) -> np.ndarray:
    """Intensity curve, bias field, Rician noise and scanner gain -> stored values."""
    h, w = image.shape
    if gamma != 1.0:
        image = np.clip(image, 0.0, None) ** gamma
    coarse = rng.normal(0, 1, (4, 4))
    bias = 1.0 + bias_strength * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img = gaussian_filter(image * bias, 0.5)
    real = img + rng.normal(0, noise, img.shape)
    imag = rng.normal(0, noise, img.shape)
    return np.sqrt(real**2 + imag**2) * gain


# ----------------------------------------------------------------------------------------------------
# DICOM writing


def _ds(values) -> list:
    return [DSfloat(float(v), auto_format=True) for v in values]


def write_series(
    directory: Path,
    images: list[np.ndarray],
    specs: list[SliceSpec],
    pose: tuple[np.ndarray, np.ndarray],
    meta: dict,
    rng: np.random.Generator,
    cfg: SynthConfig,
) -> list[dict]:
    """Write one series as {instance}.dcm files; returns each slice's patient-space geometry."""
    directory.mkdir(parents=True, exist_ok=True)
    rot, shift = pose
    slope, intercept = (2.0, -100.0) if rng.random() < cfg.p_rescaled else (1.0, 0.0)
    drop_optional = rng.random() < cfg.p_missing_optional_tags
    compress = None
    if rng.random() < cfg.p_compressed:
        compress = RLELossless if rng.random() < 0.5 or min(images[0].shape) < 32 else JPEG2000Lossless
    series_uid = generate_uid(entropy_srcs=[str(meta["series_id"])])
    base = Dataset()
    base.SOPClassUID = MRImageStorage
    base.Modality = "MR"
    base.PatientID = str(meta["study_id"])
    base.StudyInstanceUID = generate_uid(entropy_srcs=[str(meta["study_id"])])
    base.SeriesInstanceUID = series_uid
    base.SeriesNumber = meta["series_number"]
    base.SeriesDescription = meta["description"]
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 0
    if slope != 1.0:
        base.RescaleSlope = DSfloat(slope, auto_format=True)
        base.RescaleIntercept = DSfloat(intercept, auto_format=True)
    geometry_rows = []
    for instance, (image, spec) in enumerate(zip(images, specs), start=1):
        ds = copy.deepcopy(base)
        sop = generate_uid(entropy_srcs=[str(meta["series_id"]), str(instance)])
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = instance
        position = rot @ spec.position + shift
        orientation = np.concatenate([rot @ spec.row_dir, rot @ spec.col_dir])
        ds.ImagePositionPatient = _ds(position)
        ds.ImageOrientationPatient = _ds(orientation)
        ds.PixelSpacing = _ds(spec.spacing)
        if not drop_optional:
            ds.SliceThickness = DSfloat(meta["thickness"], auto_format=True)
            ds.SpacingBetweenSlices = DSfloat(meta["gap"], auto_format=True)
        stored = np.clip(np.round((image - intercept) / slope), 0, 65535).astype(np.uint16)
        ds.Rows, ds.Columns = stored.shape
        ds.PixelData = stored.tobytes()
        if compress is not None:
            ds.compress(compress)
        ds.save_as(directory / f"{instance}.dcm", enforce_file_format=True)
        # Geometry as the reader will see it (after DS rounding), for placing the labels.
        geometry_rows.append(
            {
                "instance": instance,
                "position": np.array([float(v) for v in ds.ImagePositionPatient]),
                "orientation": np.array([float(v) for v in ds.ImageOrientationPatient]),
                "spacing": np.array([float(v) for v in ds.PixelSpacing]),
                "shape": stored.shape,
            }
        )
    return geometry_rows


# ----------------------------------------------------------------------------------------------------
# One study


def make_study(args: tuple) -> dict:
    """Render and write one study; returns its table rows (series, coordinates, latent truth)."""
    study_id, pattern, split, seed, cfg = args
    rng = np.random.default_rng(seed)
    severity = draw_severities(pattern, rng, cfg.thresholds)
    p = label_probabilities(severity, cfg.thresholds, cfg.reader_noise)
    written = np.array([rng.choice(3, p=pi / pi.sum()) for pi in p], dtype=float)
    written[np.isnan(pattern)] = np.nan
    anat = Anatomy(
        scale=rng.uniform(0.95, 1.05),
        level_gap=rng.uniform(34, 38),
        lordosis=rng.uniform(4, 12),
        severity=dict(zip(LABEL_COLUMNS, severity)),
    )
    v = cfg.var
    sequences, tissue = ("t1", "t2"), None
    if v.extended_anatomy:
        structures = ("canal", "Left foramen", "Right foramen", "Left recess", "Right recess")
        anat.extra_discs = [{k: float(rng.uniform(0.0, 0.3)) for k in structures} for _ in range(2)]
        anat.sacrum = True
    if v.contrast:
        tissue = tissue_table(rng, v.contrast)
    stir = bool(v.p_stir and rng.random() < v.p_stir)
    if stir:
        sequences = SEQUENCES
    grid = render_anatomy(anat, cfg.voxel_mm, sequences, tissue)
    pose = (rotation(rng, (6, 4, 8)), rng.uniform(-40, 40, 3) + np.array([0, 0, rng.uniform(-300, 0)]))
    gain = rng.uniform(300, 3000)
    noise = rng.uniform(*(v.noise or cfg.noise))

    # Which series this study has.
    p_axial = v.axial_series or cfg.p_axial_series
    n_axial = int(rng.choice(len(p_axial), p=p_axial)) + 1
    plan: list[tuple[str, list[int] | None]] = []
    for desc in (SAGITTAL_T2, SAGITTAL_T1):
        if v.sagittal_counts:
            plan.extend((desc, None) for _ in range(int(rng.choice(3, p=v.sagittal_counts[desc]))))
        elif rng.random() >= cfg.p_missing_series[desc]:
            plan.append((desc, None))
    if rng.random() >= cfg.p_missing_series[AXIAL_T2]:
        all_levels = list(range(5))
        if n_axial == 1:
            plan.append((AXIAL_T2, all_levels))
        else:
            cut = int(rng.integers(1, 4))
            parts = [all_levels[: cut + 1], all_levels[cut:]]  # upper and lower stacks overlapping at one level
            parts += [all_levels] * (n_axial - 2)  # repeated acquisitions
            plan.extend((AXIAL_T2, part) for part in parts)
    rng.shuffle(plan)

    root = cfg.out / f"{split}_images" / str(study_id)
    series_rows, series_geometry = [], []
    used_ids: set[int] = set()
    for number, (desc, levels) in enumerate(plan, start=1):
        series_id = int(rng.integers(10**7, 4 * 10**9))
        while series_id in used_ids:
            series_id = int(rng.integers(10**7, 4 * 10**9))
        used_ids.add(series_id)
        if desc == AXIAL_T2:
            specs, gap = axial_slices(anat, rng, cfg, levels)
            volume = grid.t2
        else:
            specs, gap = sagittal_slices(anat, rng, cfg)
            volume = grid.t1 if desc == SAGITTAL_T1 else grid.volumes["stir" if stir else "t2"]
        thickness = float(gap * rng.uniform(0.85, 1.0))
        gamma = float(rng.uniform(*v.gamma)) if v.gamma[0] != v.gamma[1] else v.gamma[0]
        bias = float(rng.uniform(*v.bias)) if v.bias[0] != v.bias[1] else v.bias[0]
        images = [finish_image(render_slice(grid, volume, sp, thickness), rng, noise, gain, bias, gamma) for sp in specs]
        meta = dict(study_id=study_id, series_id=series_id, series_number=number, description=desc,
                    thickness=round(thickness, 2), gap=round(gap, 2))
        geo = write_series(root / str(series_id), images, specs, pose, meta, rng, cfg)
        series_rows.append({"study_id": study_id, "series_id": series_id, "series_description": desc})
        series_geometry.append((series_id, desc, geo))

    coords, latent = [], []
    missing_levels: set[int] = set()
    if v.p_study_missing_coordinates and rng.random() < v.p_study_missing_coordinates:
        missing_levels = {int(k) for k in rng.choice(5, size=int(rng.integers(1, 4)), replace=False)}
    rot, shift = pose
    for j, col in enumerate(LABEL_COLUMNS):
        condition, level = CONDITIONS[j // 5], LEVELS[j % 5]
        point = rot @ anat.structure_point(condition, j % 5) + shift
        latent.append(
            {
                "row_id": row_id(study_id, condition, level),
                "study_id": study_id,
                "condition": condition,
                "level": level,
                "severity": severity[j],
                "label": written[j],
                **{f"p_{t}": p[j, i] for i, t in enumerate(TARGETS)},
                "px": point[0],
                "py": point[1],
                "pz": point[2],
            }
        )
        if np.isnan(written[j]) or rng.random() < cfg.p_missing_coordinate or j % 5 in missing_levels:
            continue
        best = None
        for series_id, desc, geo in series_geometry:
            if desc != CONDITION_SERIES[condition]:
                continue
            pos = np.stack([g["position"] for g in geo])
            ori = np.stack([g["orientation"] for g in geo])
            spa = np.stack([g["spacing"] for g in geo])
            shp = np.stack([g["shape"] for g in geo])
            i, dist = geometry.nearest_slice(point, pos, ori, spa, shp)
            if i >= 0 and (best is None or dist < best[0]):
                best = (dist, series_id, geo[i])
        if best is None:
            continue
        dist, series_id, g = best
        x, y, _ = geometry.patient_to_pixel(point, g["position"], g["orientation"], g["spacing"])
        jitter = rng.normal(0, 0.5, 2) / g["spacing"][::-1]  # annotators click within about half a mm
        coords.append(
            {
                "study_id": study_id,
                "series_id": series_id,
                "instance_number": g["instance"],
                "condition": condition,
                "level": level,
                "x": float(x + jitter[0]),
                "y": float(y + jitter[1]),
            }
        )
    labels = {"study_id": study_id, **{c: (SEVERITIES[int(v)] if not np.isnan(v) else "") for c, v in zip(LABEL_COLUMNS, written)}}
    return {"split": split, "labels": labels, "series": series_rows, "coords": coords, "latent": latent}


# ----------------------------------------------------------------------------------------------------
# Whole dataset


def _study_ids(n: int, rng: np.random.Generator) -> list[int]:
    ids: set[int] = set()
    while len(ids) < n:
        ids.update(int(v) for v in rng.integers(10**6, 4_300_000_000, n - len(ids)))
    return sorted(ids)


def generate(cfg: SynthConfig) -> dict[str, Path]:
    """Write the whole synthetic dataset under cfg.out; returns the paths of the tables written."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    n_total = cfg.studies + cfg.test_studies
    if cfg.patterns is not None and Path(cfg.patterns).is_file():
        real = load_train(cfg.patterns)[list(LABEL_COLUMNS)].to_numpy()
        pick = rng.choice(len(real), size=n_total, replace=n_total > len(real))
        patterns = real[pick]
    else:
        patterns = fallback_patterns(n_total, rng)
    ids = _study_ids(n_total, rng)
    rng.shuffle(ids)
    splits = ["train"] * cfg.studies + ["test"] * cfg.test_studies
    seeds = np.random.SeedSequence(cfg.seed).spawn(n_total)
    jobs = [(sid, patterns[i], splits[i], seeds[i], cfg) for i, sid in enumerate(ids)]

    results = list(progress_map(make_study, jobs, cfg.workers, "synth studies"))

    paths: dict[str, Path] = {}
    for split in ("train", "test"):
        part = [r for r in results if r["split"] == split]
        part.sort(key=lambda r: r["labels"]["study_id"])
        series = pd.DataFrame([s for r in part for s in r["series"]], columns=["study_id", "series_id", "series_description"])
        latent = pd.DataFrame([row for r in part for row in r["latent"]], columns=LATENT_COLUMNS)
        paths[f"{split}_series"] = out / f"{split}_series_descriptions.csv"
        series.to_csv(paths[f"{split}_series"], index=False)
        study_ids = [r["labels"]["study_id"] for r in part]
        oracle = pd.DataFrame({"row_id": latent["row_id"]})
        oracle[list(TARGETS)] = metric_optimal(latent[[f"p_{t}" for t in TARGETS]].to_numpy())
        oracle = oracle.set_index("row_id").loc[submission_row_ids(study_ids)].reset_index()
        paths[f"{split}_oracle"] = out / f"{split}_oracle.csv"
        oracle.to_csv(paths[f"{split}_oracle"], index=False)
        paths[f"{split}_latent"] = out / f"{split}_latent.csv"
        latent.to_csv(paths[f"{split}_latent"], index=False)
        labels = pd.DataFrame([r["labels"] for r in part], columns=["study_id", *LABEL_COLUMNS])
        coords = pd.DataFrame(
            [c for r in part for c in r["coords"]],
            columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"],
        )
        # The test split's coordinates are a hidden answer like test_solution.csv (for scoring localization).
        paths[f"{split}_coordinates"] = out / f"{split}_label_coordinates.csv"
        coords.to_csv(paths[f"{split}_coordinates"], index=False)
        if split == "train":
            paths["train"] = out / "train.csv"
            labels.to_csv(paths["train"], index=False)
        else:
            (out / "test_images").mkdir(exist_ok=True)
            sample = pd.DataFrame({"row_id": submission_row_ids(study_ids)})
            for t in TARGETS:
                sample[t] = 1.0 / 3.0
            paths["sample_submission"] = out / "sample_submission.csv"
            sample.to_csv(paths["sample_submission"], index=False)
            numeric = labels.copy()
            for c in LABEL_COLUMNS:
                numeric[c] = numeric[c].map({s: i for i, s in enumerate(SEVERITIES)}).astype(float)
            paths["test_solution"] = out / "test_solution.csv"
            solution_frame(numeric).to_csv(paths["test_solution"], index=False)
    (out / "synth_config.json").write_text(pd.Series(asdict(cfg)).to_json(default_handler=str, indent=1))
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = SynthConfig()
    ap.add_argument("--out", type=Path, default=d.out)
    ap.add_argument("--studies", type=int, default=d.studies, help="train studies")
    ap.add_argument("--test-studies", type=int, default=d.test_studies)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--image-size", type=int, default=d.image_size, help="base image rows/columns")
    ap.add_argument("--voxel-mm", type=float, default=d.voxel_mm, help="resolution of the rendered anatomy")
    ap.add_argument("--sag-slices", type=int, nargs=2, default=d.sag_slices, metavar=("MIN", "MAX"))
    ap.add_argument("--axial-per-level", type=int, nargs=2, default=d.axial_per_level, metavar=("MIN", "MAX"))
    ap.add_argument("--reader-noise", type=float, default=d.reader_noise, help="label noise near the thresholds")
    ap.add_argument("--patterns", type=Path, default=d.patterns, help="a real train.csv to copy label patterns from")
    ap.add_argument("--p-compressed", type=float, default=d.p_compressed)
    ap.add_argument("--workers", type=int, default=d.workers)
    ap.add_argument("--variety", choices=sorted(VARIETIES), default=d.variety,
                    help="acquisition variety: 'default' is the embedded benchmark, 'real' the variety of real MRI")
    a = ap.parse_args(argv)
    cfg = SynthConfig(
        out=a.out, studies=a.studies, test_studies=a.test_studies, seed=a.seed, image_size=a.image_size,
        voxel_mm=a.voxel_mm, sag_slices=tuple(a.sag_slices), axial_per_level=tuple(a.axial_per_level),
        reader_noise=a.reader_noise, patterns=a.patterns, p_compressed=a.p_compressed, workers=a.workers,
        variety=a.variety,
    )
    paths = generate(cfg)
    print(f"wrote {cfg.studies} train and {cfg.test_studies} test studies to {cfg.out}")
    for name, path in paths.items():
        print(f"  {name}: {path}")


if __name__ == "__main__":
    main()
