"""Stage 1: find every level's point and slice on studies without coordinates.

Three heatmap models (HeatmapNet), one per series type, each trained with the generic loop:
- sagittal_t2: 5 channels (levels) for the spinal canal, run on every slice; the best slice wins.
- sagittal_t1: 5 channels (levels) for the neural foramina, run on every slice; which slices count as the
  patient's left or right is decided by 3D geometry (their side of the mid-sagittal plane), not by the
  network, since left and right foramina look alike.
- axial: 1 channel for the lateral recesses, run only on the axial slice that 3D geometry assigns to each
  level (the slice nearest the level's sagittal point, in whichever axial series covers it); its two
  peaks become left and right by their patient x coordinate.
Every model sees a slice with its two neighbours as channels, resized to loc.size_px.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .cache import load_series, series_cache_path
from .constants import AXIAL_T2, LEVELS, SAGITTAL_T1, SAGITTAL_T2
from .dicom import Series

SERIES_TYPES = {"sagittal_t2": SAGITTAL_T2, "sagittal_t1": SAGITTAL_T1, "axial": AXIAL_T2}
CHANNELS = {"sagittal_t2": 5, "sagittal_t1": 5, "axial": 1}
CONDITIONS_OF = {
    "sagittal_t2": ["Spinal Canal Stenosis"],
    "sagittal_t1": ["Left Neural Foraminal Narrowing", "Right Neural Foraminal Narrowing"],
    "axial": ["Left Subarticular Stenosis", "Right Subarticular Stenosis"],
}
STRIDE = 2  # heatmaps are half the input resolution
PATIENT_LEFT = np.array([1.0, 0.0, 0.0])  # LPS: +x is the patient's left


def channel_of(series_type: str, level: str) -> int:
    return LEVELS.index(level) if CHANNELS[series_type] == 5 else 0


def stack_of(series: Series, index: int, size: int) -> np.ndarray:
    """Slices index-1, index, index+1 (ends repeated), each resized to size x size: (3, size, size)."""
    out = np.empty((3, size, size), dtype=np.float32)
    for k, j in enumerate((index - 1, index, index + 1)):
        j = min(max(j, 0), len(series) - 1)
        out[k] = cv2.resize(series.volume[j], (size, size), interpolation=cv2.INTER_AREA)
    return out


# ------------------------------------------------------------------------------------------------
# Training data: a store of resized slices with their labelled points


@dataclass
class SliceStore:
    """Resized slices (memmap, (N, size, size) float16) with an index and the labelled points on them."""

    images: np.ndarray
    index: pd.DataFrame  # one row per slice: study_id, series_id, k, n, instance_number, h, w, first
    points: pd.DataFrame  # slice, channel, x, y (resized pixels), amplitude, condition, level


def build_slice_store(
    series_table: pd.DataFrame, coords: pd.DataFrame, cache_dir: Path, series_type: str, size: int,
    out_dir: Path, neighbour_weight: float = 0.5,
) -> SliceStore:
    """Resize every slice of every series of one type once (labelled axial slices only) into a memmap."""
    desc = SERIES_TYPES[series_type]
    series_table = series_table[series_table["series_description"] == desc].sort_values(["study_id", "series_id"])
    coords = coords[coords["condition"].isin(CONDITIONS_OF[series_type])]
    key = hashlib.md5(
        pd.util.hash_pandas_object(series_table[["study_id", "series_id"]], index=False).values.tobytes()
        + pd.util.hash_pandas_object(coords[["series_id", "instance_number", "x", "y"]], index=False).values.tobytes()
        + json.dumps([series_type, size, neighbour_weight, str(Path(cache_dir).resolve())]).encode()
    ).hexdigest()[:12]
    out_dir = Path(out_dir)
    stem = out_dir / f"slices_{series_type}_{key}"
    npy, idx_csv, pts_csv = stem.with_suffix(".npy"), Path(f"{stem}_index.csv"), Path(f"{stem}_points.csv")
    if npy.is_file() and idx_csv.is_file() and pts_csv.is_file():
        return SliceStore(np.load(npy, mmap_mode="r"), pd.read_csv(idx_csv), pd.read_csv(pts_csv))

    by_series = {sid: g for sid, g in coords.groupby("series_id")}
    rows, points, images = [], [], []
    for r in tqdm(series_table.itertuples(), total=len(series_table), desc=f"slices {series_type}"):
        path = series_cache_path(cache_dir, "train", r.study_id, r.series_id)
        if not path.is_file():
            continue
        s = load_series(path)
        h, w = s.shape
        labelled = by_series.get(r.series_id)
        present = set(s.instance_numbers.tolist())
        if series_type == "axial":
            if labelled is None:
                continue
            ks = sorted({s.index_of_instance(i) for i in labelled["instance_number"] if i in present})
        else:
            ks = list(range(len(s)))
        slot = {}
        for k in ks:
            slot[k] = len(rows)
            rows.append({"study_id": r.study_id, "series_id": r.series_id, "k": k, "n": len(s),
                         "instance_number": int(s.instance_numbers[k]), "h": h, "w": w})
            images.append(cv2.resize(s.volume[k], (size, size), interpolation=cv2.INTER_AREA).astype(np.float16))
        if labelled is None:
            continue
        for p in labelled.itertuples():
            if p.instance_number not in present:
                continue
            k0 = s.index_of_instance(p.instance_number)
            for dk, amp in ((0, 1.0), (-1, neighbour_weight), (1, neighbour_weight)):
                if (k0 + dk) in slot and (dk == 0 or series_type != "axial"):
                    points.append({"slice": slot[k0 + dk], "channel": channel_of(series_type, p.level),
                                   "x": (p.x + 0.5) * size / w - 0.5, "y": (p.y + 0.5) * size / h - 0.5,
                                   "amplitude": amp, "condition": p.condition, "level": p.level})
    out_dir.mkdir(parents=True, exist_ok=True)
    arr = np.stack(images) if images else np.zeros((0, size, size), np.float16)
    index = pd.DataFrame(rows, columns=["study_id", "series_id", "k", "n", "instance_number", "h", "w"])
    index["first"] = np.arange(len(index)) - index["k"].to_numpy()  # row of slice 0 of the same series
    if series_type == "axial":
        index["first"] = -1  # axial stores only labelled slices; neighbours come from repeating the slice
    pts = pd.DataFrame(points, columns=["slice", "channel", "x", "y", "amplitude", "condition", "level"])
    tmp = npy.with_name(f".{npy.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    index.to_csv(idx_csv, index=False)
    pts.to_csv(pts_csv, index=False)
    os.replace(tmp, npy)
    return SliceStore(np.load(npy, mmap_mode="r"), index, pts)


def gaussian_heatmaps(points: np.ndarray, channels: int, size: int, sigma: float) -> np.ndarray:
    """(channels, size/STRIDE, size/STRIDE) targets from rows (channel, x, y, amplitude) in input pixels."""
    h = size // STRIDE
    out = np.zeros((channels, h, h), dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:h]
    for c, x, y, amp in points:
        cx, cy = (x + 0.5) / STRIDE - 0.5, (y + 0.5) / STRIDE - 0.5
        g = amp * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
        out[int(c)] = np.maximum(out[int(c)], g)
    return out


def loc_transform(train: bool, rotate: float = 8.0, scale: tuple = (0.9, 1.1), translate: float = 0.06) -> A.Compose | None:
    """Mild affine augmentation moving image and keypoints together (None: no augmentation)."""
    if not train:
        return None
    return A.Compose(
        [A.Affine(rotate=(-rotate, rotate), scale=scale, translate_percent=(-translate, translate),
                  border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.7)],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False), strict=True,
    )


class SliceDataset(Dataset):
    """Items: image (3, size, size) (the slice and its neighbours), target heatmaps, row."""

    def __init__(self, store: SliceStore, rows: np.ndarray, channels: int, sigma: float, transform: A.Compose):
        self.store, self.rows, self.channels, self.sigma, self.transform = store, np.asarray(rows), channels, sigma, transform
        self.size = store.images.shape[-1]
        self._first = store.index["first"].to_numpy()
        self._k = store.index["k"].to_numpy()
        self._n = store.index["n"].to_numpy()
        self._pts = {s: g[["channel", "x", "y", "amplitude"]].to_numpy() for s, g in store.points.groupby("slice")}

    def __len__(self) -> int:
        return len(self.rows)

    def _stack(self, r: int) -> np.ndarray:
        if self._first[r] < 0:
            return np.repeat(np.asarray(self.store.images[r], np.float32)[None], 3, 0)
        ks = np.clip(self._k[r] + np.array([-1, 0, 1]), 0, self._n[r] - 1)
        return np.stack([np.asarray(self.store.images[self._first[r] + k], np.float32) for k in ks])

    def __getitem__(self, i: int) -> dict:
        r = int(self.rows[i])
        pts = self._pts.get(r, np.zeros((0, 4)))
        image = self._stack(r)
        if self.transform is not None:
            out = self.transform(image=image.transpose(1, 2, 0), keypoints=pts[:, 1:3] if len(pts) else np.zeros((0, 2)))
            image = out["image"].transpose(2, 0, 1)
            if len(pts):
                pts = np.concatenate([pts[:, :1], np.asarray(out["keypoints"]).reshape(-1, 2), pts[:, 3:]], 1)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "target": torch.from_numpy(gaussian_heatmaps(pts, self.channels, self.size, self.sigma)),
            "row": torch.tensor(i),
        }


# ------------------------------------------------------------------------------------------------
# Decoding


def refine_peak(heat: np.ndarray, y: int, x: int, radius: int = 2) -> tuple[float, float]:
    """Sub-pixel peak: heat-weighted centroid in a small window around the arg-max."""
    y0, y1 = max(y - radius, 0), min(y + radius + 1, heat.shape[0])
    x0, x1 = max(x - radius, 0), min(x + radius + 1, heat.shape[1])
    w = heat[y0:y1, x0:x1]
    w = np.clip(w - w.min(), 0, None)
    if w.sum() <= 0:
        return float(y), float(x)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())


def to_pixels(yx: tuple[float, float], size: int, shape: tuple[int, int]) -> tuple[float, float]:
    """Heatmap (y, x) -> original image pixel (x, y)."""
    y_in = (yx[0] + 0.5) * STRIDE - 0.5
    x_in = (yx[1] + 0.5) * STRIDE - 0.5
    return (x_in + 0.5) * shape[1] / size - 0.5, (y_in + 0.5) * shape[0] / size - 0.5


def best_slice_peak(heat: np.ndarray, candidates: np.ndarray) -> tuple[int, float, float, float]:
    """Among candidate slices of (N, h, w) heatmaps, the (slice, y, x, value) of the highest peak."""
    sub = heat[candidates]
    flat = int(np.argmax(sub))
    k, y, x = np.unravel_index(flat, sub.shape)
    ry, rx = refine_peak(sub[k], y, x)
    return int(candidates[k]), ry, rx, float(sub[k, y, x])


def two_peaks(heat: np.ndarray, min_dist: float) -> list[tuple[float, float, float]]:
    """The two highest peaks of a 2D heatmap at least min_dist heatmap pixels apart: [(y, x, value), ...]."""
    h = heat.copy()
    out = []
    for _ in range(2):
        y, x = np.unravel_index(int(np.argmax(h)), h.shape)
        ry, rx = refine_peak(heat, y, x)
        out.append((ry, rx, float(heat[y, x])))
        yy, xx = np.mgrid[0 : h.shape[0], 0 : h.shape[1]]
        h[(yy - y) ** 2 + (xx - x) ** 2 < min_dist**2] = -np.inf
    return out


def side_of_slices(series: Series, midline: np.ndarray | None) -> np.ndarray:
    """+1 for slices on the patient's left of the mid-sagittal plane, -1 on the right."""
    h, w = series.shape
    centres = np.stack([series.pixel_to_patient(k, (w - 1) / 2, (h - 1) / 2) for k in range(len(series))])
    ref = midline if midline is not None else centres.mean(0)
    offset = (centres - ref) @ PATIENT_LEFT
    return np.where(offset >= 0, 1, -1)


def axial_side(series: Series, index: int, x: float, y: float, other_x: float, other_y: float) -> int:
    """+1 if pixel (x, y) lies to the patient's left of (other_x, other_y) on that slice, else -1."""
    a = series.pixel_to_patient(index, x, y)
    b = series.pixel_to_patient(index, other_x, other_y)
    return 1 if float((a - b) @ PATIENT_LEFT) >= 0 else -1


# ------------------------------------------------------------------------------------------------
# From heatmaps to coordinate rows, and errors against labelled rows

COORD_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y", "confidence"]


def disc_peaks(heat: np.ndarray, candidates: np.ndarray, n: int, min_dist: float) -> list[tuple[int, int]]:
    """Up to n peaks (y, x) of the all-levels map (max over candidate slices and channels), min_dist apart."""
    work = heat[candidates].max(axis=(0, 1))
    yy, xx = np.mgrid[0 : work.shape[0], 0 : work.shape[1]]
    out = []
    for _ in range(n):
        y, x = np.unravel_index(int(np.argmax(work)), work.shape)
        if not np.isfinite(work[y, x]):
            break
        out.append((int(y), int(x)))
        work[(yy - y) ** 2 + (xx - x) ** 2 < min_dist**2] = -np.inf
    return out


def assign_levels(scores: np.ndarray, inferior: np.ndarray, min_gap: float) -> list[int] | None:
    """Peaks for the levels, top to bottom: scores (levels, peaks) are each level's heat at each peak.

    Chooses one peak per level, in head-to-feet order with at least min_gap mm between neighbours,
    maximising the summed log-heat; None when fewer peaks than levels fit.
    """
    n_levels, n_peaks = scores.shape
    order = np.argsort(inferior)
    best, best_total = None, -np.inf
    for combo in itertools.combinations(order, n_levels):  # combinations keep the head-to-feet order
        z = inferior[list(combo)]
        if np.any(np.diff(z) < min_gap):
            continue
        total = float(np.log(scores[np.arange(n_levels), list(combo)] + 1e-6).sum())
        if total > best_total:
            best, best_total = [int(c) for c in combo], total
    return best


def decode_sagittal(series_type: str, series: Series, heat: np.ndarray, ks: np.ndarray, size: int,
                    study_id: int, series_id: int, midline: np.ndarray | None = None,
                    n_candidates: int = 8, min_gap_mm: float = 15.0) -> list[dict]:
    """Rows for every level from per-slice heatmaps (len(ks), C, h, w) of a sagittal series.

    The discs are found on the map of all levels together; levels are then assigned to those peaks jointly,
    in head-to-feet order, so a level whose own channel also fires on the neighbouring disc cannot take it.
    """
    rows = []
    if series_type == "sagittal_t2":
        sides = [("Spinal Canal Stenosis", np.arange(len(ks)))]
    else:
        side = side_of_slices(series, midline)[ks]
        sides = [("Left Neural Foraminal Narrowing", np.flatnonzero(side > 0)),
                 ("Right Neural Foraminal Narrowing", np.flatnonzero(side < 0))]
    mm_per_cell = float(np.mean(series.spacings[ks[0]])) * series.shape[1] / size * STRIDE
    for condition, candidates in sides:
        if len(candidates) == 0:
            continue
        peaks = disc_peaks(heat, candidates, n_candidates, min_gap_mm / mm_per_cell)
        sub = heat[candidates]  # (K, C, h, w)
        scores = np.array([[sub[:, c, y, x].max() for y, x in peaks] for c in range(len(LEVELS))])
        inferior = np.array([-series.pixel_to_patient(ks[candidates[0]], *to_pixels((y, x), size, series.shape))[2]
                             for y, x in peaks])
        picks = assign_levels(scores, inferior, min_gap_mm) if len(peaks) >= len(LEVELS) else None
        for c, level in enumerate(LEVELS):
            if picks is not None:
                y, x = peaks[picks[c]]
            else:  # too few separate peaks: each level's own maximum
                y, x = np.unravel_index(int(np.argmax(sub[:, c].max(0))), sub.shape[-2:])
            j = int(np.argmax(sub[:, c, y, x]))
            ry, rx = refine_peak(sub[j, c], y, x)
            px, py = to_pixels((ry, rx), size, series.shape)
            rows.append({"study_id": study_id, "series_id": series_id,
                         "instance_number": int(series.instance_numbers[ks[candidates[j]]]), "condition": condition,
                         "level": level, "x": px, "y": py, "confidence": float(sub[j, c, y, x])})
    return rows


def decode_axial(series: Series, k: int, heat: np.ndarray, size: int, study_id: int, series_id: int,
                 level: str, min_dist_mm: float = 8.0) -> list[dict]:
    """Left and right subarticular rows from one axial slice's heatmap (h, w)."""
    mm_per_cell = float(np.mean(series.spacings[k])) * series.shape[1] / size * STRIDE
    peaks = two_peaks(heat, max(min_dist_mm / mm_per_cell, 1.0))
    pix = [to_pixels((y, x), size, series.shape) for y, x, _ in peaks]
    first_is_left = axial_side(series, k, *pix[0], *pix[1]) > 0
    named = (("Left", 0), ("Right", 1)) if first_is_left else (("Left", 1), ("Right", 0))
    return [{"study_id": study_id, "series_id": series_id, "instance_number": int(series.instance_numbers[k]),
             "condition": f"{side} Subarticular Stenosis", "level": level, "x": pix[i][0], "y": pix[i][1],
             "confidence": peaks[i][2]} for side, i in named]


def decode_series_points(series_type: str, series: Series, heat: np.ndarray, ks: np.ndarray, size: int,
                         study_id: int, series_id: int, labelled: pd.DataFrame | None = None) -> pd.DataFrame:
    """Validation decoding: sagittal series as at test time; axial slices with the level of their label."""
    if series_type != "axial":
        rows = decode_sagittal(series_type, series, heat, ks, size, study_id, series_id)
    else:
        rows = []
        for j, k in enumerate(ks):
            on_slice = labelled[labelled["instance_number"] == series.instance_numbers[k]] if labelled is not None else []
            if len(on_slice):
                rows += decode_axial(series, int(k), heat[j, 0], size, study_id, series_id, on_slice["level"].iloc[0])
    return pd.DataFrame(rows, columns=COORD_COLUMNS)


def point_errors(pred: pd.DataFrame, truth: pd.DataFrame, cache_dir: Path, split: str) -> pd.DataFrame:
    """One row per labelled point: in-plane error (px, mm) on the predicted slice, 3D error, right slice (+-1).

    The labelled 3D point is projected onto the predicted slice, so points predicted on another series
    (several axial series) are compared fairly; a labelled point without a prediction is a miss.
    """
    keys = ["study_id", "condition", "level"]
    merged = truth.merge(pred, on=keys, how="left", suffixes=("_true", ""))
    loaded: dict[int, Series] = {}

    def get(study_id: int, series_id: int) -> Series:
        if series_id not in loaded:
            loaded[series_id] = load_series(series_cache_path(cache_dir, split, study_id, series_id))
        return loaded[series_id]

    out = []
    for r in merged.itertuples():
        row = {"study_id": r.study_id, "condition": r.condition, "level": r.level, "error_px": np.nan,
               "error_mm": np.nan, "error_3d_mm": np.nan, "instance_ok": False}
        if not np.isnan(r.x):
            truth_s, pred_s = get(r.study_id, int(r.series_id_true)), get(r.study_id, int(r.series_id))
            kt, kp = truth_s.index_of_instance(r.instance_number_true), pred_s.index_of_instance(int(r.instance_number))
            q = truth_s.pixel_to_patient(kt, r.x_true, r.y_true)
            p = pred_s.pixel_to_patient(kp, r.x, r.y)
            xq, yq, dist = pred_s.patient_to_pixel(kp, q)
            row_mm, col_mm = pred_s.spacings[kp]
            row.update(error_px=float(np.hypot(r.x - xq, r.y - yq)),
                       error_mm=float(np.hypot((r.x - xq) * col_mm, (r.y - yq) * row_mm)),
                       error_3d_mm=float(np.linalg.norm(p - q)))
            if int(r.series_id) == int(r.series_id_true):
                row["instance_ok"] = abs(kp - kt) <= 1
            else:
                row["instance_ok"] = abs(float(dist)) <= 1.5 * max(pred_s.slice_gap, 1e-6)
        out.append(row)
    return pd.DataFrame(out, columns=["study_id", "condition", "level", "error_px", "error_mm", "error_3d_mm", "instance_ok"])
