"""DICOM patient-space geometry: pixel <-> millimetres and nearest slices across series.

Conventions (DICOM): ImageOrientationPatient holds the row direction (the way the column index x grows)
then the column direction (the way the row index y grows); PixelSpacing is (row spacing, column spacing),
i.e. (mm per step in y, mm per step in x). Patient space is LPS: +x left, +y posterior, +z head.
"""
from __future__ import annotations

import numpy as np


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal(s) of slice plane(s) from ImageOrientationPatient (..., 6)."""
    o = np.asarray(orientation, dtype=float)
    n = np.cross(o[..., :3], o[..., 3:])
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def pixel_to_patient(
    x: np.ndarray | float,
    y: np.ndarray | float,
    position: np.ndarray,
    orientation: np.ndarray,
    spacing: np.ndarray,
) -> np.ndarray:
    """Pixel (x = column, y = row) on a slice -> patient coordinates in mm, shape (..., 3)."""
    o = np.asarray(orientation, dtype=float)
    s = np.asarray(spacing, dtype=float)
    x = np.asarray(x, dtype=float)[..., None]
    y = np.asarray(y, dtype=float)[..., None]
    return np.asarray(position, dtype=float) + x * s[..., 1:2] * o[..., :3] + y * s[..., 0:1] * o[..., 3:]


def patient_to_pixel(
    point: np.ndarray, position: np.ndarray, orientation: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient point(s) (..., 3) -> (x, y, signed distance in mm from the slice plane along its normal)."""
    o = np.asarray(orientation, dtype=float)
    s = np.asarray(spacing, dtype=float)
    d = np.asarray(point, dtype=float) - np.asarray(position, dtype=float)
    # Row and column directions are orthonormal in valid DICOM, so projection inverts pixel_to_patient.
    x = (d * o[..., :3]).sum(-1) / s[..., 1]
    y = (d * o[..., 3:]).sum(-1) / s[..., 0]
    dist = (d * slice_normal(o)).sum(-1)
    return x, y, dist


def holds_point(point: np.ndarray, positions: np.ndarray, orientations: np.ndarray, spacings: np.ndarray,
                shapes: np.ndarray) -> np.ndarray:
    """Per slice ((N, 2) shapes: rows, columns), whether its image contains the point's projection."""
    x, y, _ = patient_to_pixel(point, np.asarray(positions, dtype=float), np.asarray(orientations, dtype=float), spacings)
    shapes = np.asarray(shapes)
    return (x >= -0.5) & (y >= -0.5) & (x <= shapes[:, 1] - 0.5) & (y <= shapes[:, 0] - 0.5)


def nearest_slice(
    point: np.ndarray,
    positions: np.ndarray,
    orientations: np.ndarray,
    spacings: np.ndarray | None = None,
    shapes: np.ndarray | None = None,
) -> tuple[int, float]:
    """Index of the slice whose plane lies nearest a 3D point, and that distance in mm.

    With spacings and shapes ((N, 2) rows, columns) given, slices whose image does not contain the
    point's projection are skipped, which matters for axial series made of separate per-level stacks.
    Returns (-1, inf) when no slice qualifies.
    """
    positions = np.asarray(positions, dtype=float)
    orientations = np.asarray(orientations, dtype=float)
    dist = np.abs(((np.asarray(point, dtype=float) - positions) * slice_normal(orientations)).sum(-1))
    if spacings is not None and shapes is not None:
        dist = np.where(holds_point(point, positions, orientations, spacings, shapes), dist, np.inf)
    if len(dist) == 0 or not np.isfinite(dist).any():
        return -1, float("inf")
    i = int(np.argmin(dist))
    return i, float(dist[i])
