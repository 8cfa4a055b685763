"""Reading one DICOM series into a volume with per-slice geometry; the one decode+normalize path.

Training (the preprocessing cache) and inference both call read_series, so intensities and geometry are
computed the same way everywhere.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.pixels import apply_rescale

from ..core.faults import InputError
from . import geometry


class DicomError(InputError, RuntimeError):
    """A series has no readable slice at all."""


class DicomWarning(UserWarning):
    """A slice was skipped or repaired while reading a series."""


# Normals closer than this (cosine) belong to one orientation group (about 1.1 degrees).
_SAME_ORIENTATION_COS = 0.9998


@dataclass
class Series:
    """One series as a (N, H, W) float32 volume ordered along the slice normal, plus each slice's geometry."""

    path: Path
    volume: np.ndarray
    instance_numbers: np.ndarray
    positions: np.ndarray  # (N, 3) ImagePositionPatient, mm
    orientations: np.ndarray  # (N, 6) ImageOrientationPatient
    spacings: np.ndarray  # (N, 2) PixelSpacing (row, column), mm
    thickness: float | None = None
    description: str | None = None
    n_orientation_groups: int = 1
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.volume)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.volume.shape[1]), int(self.volume.shape[2])

    @property
    def normal(self) -> np.ndarray:
        """Mean slice normal of the series (unit vector)."""
        n = geometry.slice_normal(self.orientations).mean(0)
        return n / np.linalg.norm(n)

    @property
    def depths(self) -> np.ndarray:
        """Each slice's position (mm) along the mean slice normal."""
        return self.positions @ self.normal

    @property
    def slice_gap(self) -> float:
        """Median distance (mm) between neighbouring slices along the normal; 0 for one slice."""
        if len(self) < 2:
            return 0.0
        return float(np.median(np.abs(np.diff(self.depths))))

    def index_of_instance(self, instance_number: int) -> int:
        """Position in the volume of the slice with this InstanceNumber; KeyError if absent."""
        hits = np.flatnonzero(self.instance_numbers == int(instance_number))
        if len(hits) == 0:
            raise KeyError(f"{self.path}: no instance {instance_number}")
        return int(hits[0])

    def pixel_to_patient(self, index: int, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Pixel (x, y) on slice `index` -> patient coordinates (mm)."""
        return geometry.pixel_to_patient(x, y, self.positions[index], self.orientations[index], self.spacings[index])

    def patient_to_pixel(self, index: int, point: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient point(s) -> (x, y, distance to the plane) on slice `index`."""
        return geometry.patient_to_pixel(point, self.positions[index], self.orientations[index], self.spacings[index])

    def nearest_slice(self, point: np.ndarray) -> tuple[int, float]:
        """Index of the slice nearest a patient point whose image contains it, and the distance in mm."""
        shapes = np.tile(np.asarray(self.shape), (len(self), 1))
        return geometry.nearest_slice(point, self.positions, self.orientations, self.spacings, shapes)


def nearest_of(series: list[tuple[int, Series]], point: np.ndarray,
               within_slab: bool = False) -> tuple[int, Series, int, float] | None:
    """Over several series of a study (series id, Series), e.g. its axial stacks: (series id, series, slice index,
    distance in mm) of the slice nearest a patient point whose image contains it; None when none does. With
    within_slab a slice counts only within half its series' slice gap of the point (inside the slab)."""
    best = None
    for series_id, s in series:
        index, depth = s.nearest_slice(point)
        if index < 0 or (within_slab and depth > s.slice_gap / 2 + 1e-6):
            continue
        if best is None or depth < best[3]:
            best = (series_id, s, index, depth)
    return best

# Marks a series note whose geometry was replaced by a fallback: its crops may not sit where the tags say, so
# the study counts as degraded (unit 'geometry') rather than only repaired.
GEOMETRY_FALLBACK = "geometry fallback:"


def decode(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel data of one dataset as float32 with RescaleSlope/Intercept applied (any transfer syntax), bright
    where the tissue is bright: MONOCHROME1 (the lowest value shown white) is inverted within its stored range
    first, so such a series reads as its MONOCHROME2 twin."""
    arr = ds.pixel_array
    if arr.ndim != 2:
        raise ValueError(f"expected one 2D frame, got shape {arr.shape}")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1":
        bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        arr = (low + high) - arr.astype(np.int64)
    return np.asarray(apply_rescale(arr, ds), dtype=np.float32)


def normalize_intensity(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Percentile window of a whole series mapped to [0, 1] (robust to MR's arbitrary units and hot pixels)."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.size == 0:
        return volume
    lo, hi = np.percentile(volume, [low, high])
    if hi <= lo:
        return np.zeros_like(volume)
    return np.clip((volume - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _optional_float(ds: pydicom.Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _resize_slice(image: np.ndarray, shape: tuple[int, int], position, orientation, spacing):
    """Resize a slice to `shape` and return the geometry that keeps its physical field of view."""
    h, w = image.shape
    new_h, new_w = shape
    sy, sx = h / new_h, w / new_w
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    new_spacing = np.array([spacing[0] * sy, spacing[1] * sx])
    # cv2 maps new pixel centre i to old coordinate (i + 0.5) * s - 0.5, so pixel 0 moves by 0.5 * s - 0.5.
    new_position = geometry.pixel_to_patient(0.5 * sx - 0.5, 0.5 * sy - 0.5, position, orientation, spacing)
    return resized, new_position, new_spacing


def read_series(series_dir: str | Path, normalize: bool = True, description: str | None = None) -> Series:
    """Read {series_dir}/*.dcm into a Series ordered by position along the slice normal.

    Survives, with a DicomWarning: unreadable or truncated files and files without image geometry
    (skipped), slices of another shape (resized to the most common shape, geometry adjusted), several
    orientation groups (kept, ordered along the mean normal), missing optional tags, and, noted as a
    GEOMETRY_FALLBACK: PixelSpacing that differs between slices (the median is used) and positions that do
    not spread along the normal (InstanceNumber order, one slice thickness apart). Raises DicomError
    only when no slice can be read. normalize=True maps intensities to [0, 1] (normalize_intensity).
    """
    series_dir = Path(series_dir)
    files = sorted(series_dir.glob("*.dcm"))
    if not files:
        raise DicomError(f"{series_dir}: no .dcm files")
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        warnings.warn(message, DicomWarning, stacklevel=3)

    sl = _read_slices(files, note)
    if not sl["images"]:
        raise DicomError(f"{series_dir}: none of {len(files)} files could be read")
    kept = _to_common_shape(sl, series_dir, note)
    orientations = np.stack(sl["orientations"])
    n_groups, mean_normal = _mean_normal(geometry.slice_normal(orientations), series_dir)
    spacings = _common_spacing(np.stack(sl["spacings"]), kept, series_dir, note)
    positions = _spread_positions(np.stack(sl["positions"]), mean_normal, sl, series_dir, note)
    order = np.argsort(positions @ mean_normal, kind="stable")
    instances = _instance_numbers(sl["instances"], order, series_dir, note)
    volume = np.stack([sl["images"][i] for i in order]).astype(np.float32)
    known_thickness = [t for t in sl["thickness"] if t is not None]
    return Series(
        path=series_dir,
        volume=normalize_intensity(volume) if normalize else volume,
        instance_numbers=np.asarray(instances, dtype=np.int64)[order],
        positions=positions[order],
        orientations=orientations[order],
        spacings=spacings[order],
        thickness=float(np.median(known_thickness)) if known_thickness else None,
        description=description,
        n_orientation_groups=n_groups,
        warnings=notes,
    )


def _read_slices(files: list[Path], note) -> dict[str, list]:
    """Pixels, geometry, InstanceNumber (-1 when missing) and SliceThickness of every readable file."""
    sl: dict[str, list] = {k: [] for k in ("images", "positions", "orientations", "spacings", "instances", "thickness")}
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            image = decode(ds)
            position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
            spacing = np.array([float(v) for v in ds.PixelSpacing], dtype=float)
            if position.shape != (3,) or orientation.shape != (6,) or spacing.shape != (2,):
                raise ValueError("malformed geometry tags")
        except Exception as err:  # noqa: BLE001 - any broken file is skipped, never fatal
            note(f"{f}: skipped unreadable slice ({type(err).__name__}: {err})")
            continue
        instance = ds.get("InstanceNumber")
        sl["images"].append(image)
        sl["positions"].append(position)
        sl["orientations"].append(orientation)
        sl["spacings"].append(spacing)
        sl["instances"].append(int(instance) if instance not in (None, "") else -1)
        sl["thickness"].append(_optional_float(ds, "SliceThickness"))
    return sl


def _to_common_shape(sl: dict[str, list], series_dir: Path, note) -> np.ndarray:
    """Resize slices of another shape to the most common one (geometry adjusted, in place); returns which
    slices kept their own shape (and so their own PixelSpacing tag)."""
    shape = Counter(im.shape for im in sl["images"]).most_common(1)[0][0]
    kept = np.array([im.shape == shape for im in sl["images"]])
    for i, im in enumerate(sl["images"]):
        if im.shape != shape:
            note(f"{series_dir}: instance {sl['instances'][i]} has shape {im.shape}, resized to {shape}")
            sl["images"][i], sl["positions"][i], sl["spacings"][i] = _resize_slice(
                im, shape, sl["positions"][i], sl["orientations"][i], sl["spacings"][i])
    return kept


def _mean_normal(normals: np.ndarray, series_dir: Path) -> tuple[int, np.ndarray]:
    """The number of orientation groups (greedy, sign-agnostic clustering of the normals) and the mean normal,
    signed like the first slice's."""
    reps: list[np.ndarray] = []
    for n in normals:
        if not any(abs(float(n @ r)) >= _SAME_ORIENTATION_COS for r in reps):
            reps.append(n)
    if len(reps) > 1:
        # Normal for axial blocks angled per disc: said, but not a problem to report with the series.
        warnings.warn(f"{series_dir}: {len(reps)} orientation groups; slices ordered along the mean normal",
                      DicomWarning, stacklevel=3)
    signs = np.sign(normals @ normals[0])
    signs[signs == 0] = 1
    return len(reps), (normals * signs[:, None]).mean(0)


def _common_spacing(spacings: np.ndarray, kept: np.ndarray, series_dir: Path, note) -> np.ndarray:
    """Slices of one shape and field of view share one pixel spacing: a tag that differs from the others'
    median is replaced by it (a GEOMETRY_FALLBACK)."""
    median_spacing = np.median(spacings[kept], axis=0)
    off = kept & (np.abs(spacings - median_spacing) > 0.01 * median_spacing).any(1)
    if off.any():
        note(f"{series_dir}: {GEOMETRY_FALLBACK} PixelSpacing of {int(off.sum())} of {len(off)} slices differs from "
             f"the others' {median_spacing[0]:.3f} x {median_spacing[1]:.3f} mm; the series' median is used")
        spacings[off] = median_spacing
    return spacings


def _spread_positions(positions: np.ndarray, mean_normal: np.ndarray, sl: dict[str, list], series_dir: Path,
                      note) -> np.ndarray:
    """The positions, or, when they do not spread along the normal (they then cannot order the slices nor place
    a level on one), the slices in InstanceNumber order one slice gap apart (the median SliceThickness, else
    1 mm): a GEOMETRY_FALLBACK."""
    depth = positions @ mean_normal
    if len(depth) > 1 and len(np.unique(np.round(depth, 2))) < max(2, len(depth) // 2):
        thickness = sl["thickness"]
        gap = float(np.median([t for t in thickness if t])) if any(thickness) else 1.0
        rank = np.argsort(np.asarray(sl["instances"]), kind="stable")
        positions = positions.copy()
        positions[rank] = positions[rank[0]] + np.arange(len(rank))[:, None] * gap * mean_normal / np.linalg.norm(mean_normal)
        note(f"{series_dir}: {GEOMETRY_FALLBACK} {len(depth)} slices at {len(np.unique(np.round(depth, 2)))} distinct "
             f"positions along the normal; ordered by InstanceNumber, {gap:g} mm apart")
    return positions


def _instance_numbers(instances: list[int], order: np.ndarray, series_dir: Path, note) -> list[int]:
    """InstanceNumbers with a missing one replaced by its slice's position rank; repeated ones are named."""
    if any(i < 0 for i in instances):
        note(f"{series_dir}: missing InstanceNumber replaced by position rank")
        ranks = np.empty(len(order), dtype=int)
        ranks[order] = np.arange(1, len(order) + 1)
        instances = [inst if inst >= 0 else int(ranks[k]) for k, inst in enumerate(instances)]
    repeated = sorted(n for n, c in Counter(instances).items() if c > 1)
    if repeated:
        note(f"{series_dir}: InstanceNumber {', '.join(map(str, repeated[:5]))} used by more than one slice; "
             "a coordinate on such an instance is read on the first of them along the normal")
    return instances
