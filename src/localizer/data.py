"""The localizer's training data: a store of resized slices with their labelled points, and heatmap targets.

Every model sees a slice with its two neighbours as channels, resized to loc.size_px.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..core.atomic import atomic_path, cache_lock, write_csv
from ..core.progress import progress
from ..data.cache import entries_signature, load_series, series_cache_path, to_stored, to_unit
from ..data.dicom import Series
from .frame import series_frame
from .plan import STRIDE, Part, part


@dataclass
class SliceStore:
    """Resized slices (memmap, (N, size, size) 8-bit) with an index and the labelled points on them."""

    images: np.ndarray
    index: pd.DataFrame  # one row per slice: study_id, series_id, k, n, instance_number, h, w, first
    points: pd.DataFrame  # slice, channel, x, y (resized pixels), amplitude, condition, level


def build_slice_store(
    series_table: pd.DataFrame, coords: pd.DataFrame, cache_dir: Path, series_type: str, size: int,
    out_dir: Path, neighbour_weight: float = 0.5,
) -> SliceStore:
    """Resize every slice of every series of one type once (labelled axial slices only) into a memmap."""
    plan = part(series_type)
    series_table = series_table[series_table["series_description"] == plan.description].sort_values(["study_id", "series_id"])
    coords = coords[coords["condition"].isin(plan.conditions)]
    key = hashlib.md5(
        pd.util.hash_pandas_object(series_table[["study_id", "series_id"]], index=False).values.tobytes()
        + pd.util.hash_pandas_object(coords[["series_id", "instance_number", "x", "y"]], index=False).values.tobytes()
        + json.dumps([series_type, size, neighbour_weight, str(Path(cache_dir).resolve()), "aspect-kept"]).encode()
        + entries_signature(cache_dir, "train", zip(series_table["study_id"], series_table["series_id"]))
    ).hexdigest()[:12]
    out_dir = Path(out_dir)
    stem = out_dir / f"slices_{series_type}_{key}"
    npy, idx_csv, pts_csv = stem.with_suffix(".npy"), Path(f"{stem}_index.csv"), Path(f"{stem}_points.csv")
    def complete() -> bool:
        return npy.is_file() and idx_csv.is_file() and pts_csv.is_file()

    if not complete():
        with cache_lock(npy):  # trainings started together build each store once
            if not complete():
                _write_store(series_table, coords, cache_dir, plan, size, neighbour_weight, (npy, idx_csv, pts_csv))
    return SliceStore(np.load(npy, mmap_mode="r"), pd.read_csv(idx_csv), pd.read_csv(pts_csv))


def _write_store(series_table: pd.DataFrame, coords: pd.DataFrame, cache_dir: Path, plan, size: int,
                 neighbour_weight: float, files: tuple[Path, Path, Path]) -> None:
    """build_slice_store's files: the resized slices (npy, written last), their index and the points."""
    npy, idx_csv, pts_csv = files
    series_type = plan.series_type
    by_series = {sid: g for sid, g in coords.groupby("series_id")}
    rows, points, images = [], [], []
    for r in progress(series_table.itertuples(), f"slices {series_type}", total=len(series_table)):
        path = series_cache_path(cache_dir, "train", r.study_id, r.series_id)
        if path.is_file():
            _add_series(load_series(path), r, by_series.get(r.series_id), plan, size, neighbour_weight,
                        (rows, points, images))
    arr = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    index = pd.DataFrame(rows, columns=["study_id", "series_id", "k", "n", "instance_number", "h", "w"])
    index["first"] = np.arange(len(index)) - index["k"].to_numpy()  # row of slice 0 of the same series
    if not plan.searched:
        index["first"] = -1  # only labelled slices are stored; neighbours come from repeating the slice
    pts = pd.DataFrame(points, columns=["slice", "channel", "x", "y", "amplitude", "condition", "level"])
    write_csv(index, idx_csv)
    write_csv(pts, pts_csv)
    with atomic_path(npy, ".npy") as tmp:  # written last: its presence means the store is complete
        np.save(tmp, arr)


def _add_series(s: Series, r, labelled: pd.DataFrame | None, plan: Part, size: int, neighbour_weight: float,
                out: tuple[list, list, list]) -> None:
    """Append one series' slices (every slice of a searched type, the labelled ones otherwise: the test-time
    slice comes from geometry) and its labelled points (on the neighbour slices too, weighted, when searched)
    to the store's rows, points and images."""
    rows, points, images = out
    present = set(s.instance_numbers.tolist())
    if not plan.searched:
        if labelled is None:
            return
        ks = sorted({s.index_of_instance(i) for i in labelled["instance_number"] if i in present})
    else:
        ks = list(range(len(s)))
    h, w = s.shape
    slot = {}
    for k in ks:
        slot[k] = len(rows)
        rows.append({"study_id": r.study_id, "series_id": r.series_id, "k": k, "n": len(s),
                     "instance_number": int(s.instance_numbers[k]), "h": h, "w": w})
        images.append(to_stored(series_frame(s, k, size).place(s.volume[k])))
    for p in labelled.itertuples() if labelled is not None else []:
        if p.instance_number not in present:
            continue
        k0 = s.index_of_instance(p.instance_number)
        x, y = series_frame(s, k0, size).to_input(p.x, p.y)
        for dk, amp in ((0, 1.0), (-1, neighbour_weight), (1, neighbour_weight)):
            if (k0 + dk) in slot and (dk == 0 or plan.searched):
                points.append({"slice": slot[k0 + dk], "channel": plan.channel(p.level), "x": float(x),
                               "y": float(y), "amplitude": amp, "condition": p.condition, "level": p.level})


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


def loc_transform(train: bool, rotate: float = 8.0, scale: tuple = (0.8, 1.25), translate: float = 0.06,
                  gamma: tuple = (70, 140)) -> A.Compose | None:
    """Mild affine augmentation moving image and keypoints together, with the spread of fields of view, plus
    the intensity curves and contrasts that differ between scanners (None: no augmentation)."""
    if not train:
        return None
    return A.Compose(
        [A.Affine(rotate=(-rotate, rotate), scale=scale, translate_percent=(-translate, translate),
                  border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.7),
         A.RandomGamma(gamma_limit=gamma, p=0.5),
         A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.25, p=0.5)],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False), strict=True,
    )


class SliceDataset(Dataset):
    """Items: image (3, size, size) (the slice and its neighbours), target heatmaps (channels, plus their
    maximum with any_channel), row."""

    def __init__(self, store: SliceStore, rows: np.ndarray, channels: int, sigma: float, transform: A.Compose,
                 any_channel: bool = False):
        self.store, self.rows, self.channels, self.sigma, self.transform = store, np.asarray(rows), channels, sigma, transform
        self.any_channel = any_channel  # append the maximum of the point channels as one more target channel
        self.size = store.images.shape[-1]
        self._first = store.index["first"].to_numpy()
        self._k = store.index["k"].to_numpy()
        self._n = store.index["n"].to_numpy()
        self._pts = {s: g[["channel", "x", "y", "amplitude"]].to_numpy() for s, g in store.points.groupby("slice")}

    def __len__(self) -> int:
        return len(self.rows)

    def _stack(self, r: int) -> np.ndarray:
        if self._first[r] < 0:
            return np.repeat(to_unit(self.store.images[r])[None], 3, 0)
        ks = np.clip(self._k[r] + np.array([-1, 0, 1]), 0, self._n[r] - 1)
        return to_unit(self.store.images[self._first[r] + ks])

    def _target(self, pts: np.ndarray) -> np.ndarray:
        target = gaussian_heatmaps(pts, self.channels, self.size, self.sigma)
        if self.any_channel:
            target = np.concatenate([target, target.max(0, keepdims=True)])
        return target

    def target(self, i: int) -> torch.Tensor:
        """Item i's target heatmaps without its image (the unaugmented item's: validation scores them every
        epoch, and reading the slices again for that would cost as much as the forward pass)."""
        return torch.from_numpy(self._target(self._pts.get(int(self.rows[i]), np.zeros((0, 4)))))

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
            "target": torch.from_numpy(self._target(pts)),
            "row": torch.tensor(i),
        }
