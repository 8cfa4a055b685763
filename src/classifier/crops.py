"""Level-wise ROI crops: a 2.5D stack of slices around a (series, instance, x, y) point, fixed size in mm.

The same code cuts crops at labelled coordinates (training) and at predicted ones (test-time localization),
since both come as tables in the train_label_coordinates.csv format.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from ..core.atomic import atomic_path, cache_lock, write_csv, write_text
from ..core.config import DEFAULTS
from ..core.constants import CONDITIONS, LEVELS, SERIES_TYPES, condition_group, row_id
from ..core.parallel import progress_map
from ..data import geometry
from ..data.cache import entries_signature, load_series, series_cache_path, to_stored, to_unit
from ..data.dicom import Series, nearest_of, normalize_intensity

if TYPE_CHECKING:
    import torch


_CROP = DEFAULTS["crop"]  # the one home of the crop defaults


@dataclass(frozen=True)
class CropSpec:
    """How crops are cut: slices per stack, output pixels, physical side per condition group (mm); the
    defaults are the config's (core.config.DEFAULTS['crop'])."""

    n_slices: int = _CROP["n_slices"]
    size_px: int = _CROP["size_px"]
    size_mm: dict = field(default_factory=lambda: dict(_CROP["size_mm"]))
    context: float = _CROP["context"]  # cut this much wider so augmentation never pulls in empty borders

    @property
    def stored_px(self) -> int:
        return int(round(self.size_px * self.context))

    def mm(self, condition: str) -> float:
        return float(self.size_mm[condition_group(condition)])


def neighbour_slices(series: Series, index: int, n_slices: int, centre: np.ndarray | None = None) -> list[int]:
    """The slices of a crop stack around slice `index`, in the order of the series.

    Each is the slice nearest the point one slice gap further along the normal of slice `index` (through
    `centre`, default the slice's centre), among the slices whose image contains it; so a slice at the edge
    of an axial block angled to its disc never borrows a slice of the next block: like the ends of a
    series, it repeats the nearest slice of its own block.
    """
    if centre is None:
        h, w = series.shape
        centre = series.pixel_to_patient(index, (w - 1) / 2, (h - 1) / 2)
    normal = geometry.slice_normal(series.orientations[index])
    if normal @ series.normal < 0:
        normal = -normal  # step the way the series is ordered
    gap = series.slice_gap or 1.0
    shapes = np.tile(np.asarray(series.shape), (len(series), 1))
    half = n_slices // 2
    out = []
    for k in range(n_slices):
        j = index
        if k != half:
            target = centre + (k - half) * gap * normal
            j, _ = geometry.nearest_slice(target, series.positions, series.orientations, series.spacings, shapes)
        out.append(index if j < 0 else int(j))
    return out


def cut_crop(series: Series, index: int, x: float, y: float, size_mm: float, size_px: int, n_slices: int) -> np.ndarray:
    """(n_slices, size_px, size_px) crop centred on pixel (x, y) of slice `index`, normalised to [0, 1].

    The stack's slices come from neighbour_slices (along the slice's own normal); each is sampled where the
    same 3D point projects onto it (exact for tilted stacks); areas outside the image are zero.
    """
    centre = series.pixel_to_patient(index, x, y)
    out = np.zeros((n_slices, size_px, size_px), dtype=np.float32)
    for k, j in enumerate(neighbour_slices(series, index, n_slices, centre)):
        xj, yj, _ = series.patient_to_pixel(j, centre)
        row_mm, col_mm = series.spacings[j]
        sx, sy = size_mm / (size_px * col_mm), size_mm / (size_px * row_mm)
        # Output pixel u samples source x = xj + ((u + 0.5) / P - 0.5) * size_mm / col_mm.
        m = np.array([[sx, 0.0, xj + (0.5 / size_px - 0.5) * size_mm / col_mm],
                      [0.0, sy, yj + (0.5 / size_px - 0.5) * size_mm / row_mm]])
        out[k] = cv2.warpAffine(
            series.volume[j], m, (size_px, size_px),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
        )
    return normalize_intensity(out)  # per crop: the window of what the model sees


def crop_table(coords: pd.DataFrame) -> pd.DataFrame:
    """Coordinates -> the rows crops are cut for, with row_id and condition/level indices, one per row_id."""
    table = coords.copy()
    table["row_id"] = [row_id(s, c, lv) for s, c, lv in zip(table["study_id"], table["condition"], table["level"])]
    table["condition_idx"] = table["condition"].map({c: i for i, c in enumerate(CONDITIONS)}).astype(int)
    table["level_idx"] = table["level"].map({lv: i for i, lv in enumerate(LEVELS)}).astype(int)
    # A few real studies have the same point twice (or on two series): keep the first per row_id (and variant
    # and view: crops.jittered, crops.other_views).
    variant = [c for c in ("view", "variant") if c in table]
    table = table.drop_duplicates(["row_id", *variant]).sort_values(["study_id", "condition_idx", "level_idx", *variant])
    return table.reset_index(drop=True)


JITTER_COLUMNS = ("dx_mm", "dy_mm", "dslice")  # a crop's offset from its point: in-plane (mm) and in slices


def jittered(coords: pd.DataFrame, copies: int, errors: pd.DataFrame | None = None, mm: float = 2.0,
             slices: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """The coordinates (variant 0) plus `copies` variants of each point moved the way a localizer errs.

    Offsets (JITTER_COLUMNS) are drawn from `errors` (localizer.errors.point_errors rows: the measured signed
    errors of the same condition, resampled; misses skipped) or, without errors, from normal distributions
    with standard deviations `mm` in-plane and `slices` (rounded to whole slices).
    """
    rng = np.random.default_rng(seed)
    out = [coords.assign(variant=0, dx_mm=0.0, dy_mm=0.0, dslice=0.0)]
    found = None if errors is None else errors.dropna(subset=list(JITTER_COLUMNS))
    for v in range(1, copies + 1):
        offsets = np.zeros((len(coords), 3))
        for condition, rows in coords.groupby("condition").indices.items():
            if found is not None and len(found):
                pool = found[found["condition"] == condition]
                pool = (pool if len(pool) else found)[list(JITTER_COLUMNS)].to_numpy(float)
                offsets[rows] = pool[rng.integers(len(pool), size=len(rows))]
            else:
                offsets[rows] = rng.normal(0.0, [mm, mm, slices], size=(len(rows), 3))
        offsets[:, 2] = np.round(offsets[:, 2])
        out.append(coords.assign(variant=v, dx_mm=offsets[:, 0], dy_mm=offsets[:, 1], dslice=offsets[:, 2]))
    return pd.concat(out, ignore_index=True)


def other_views(coords: pd.DataFrame, descriptions: pd.DataFrame, cache_dir: Path, split: str,
                views: dict[str, list[str]]) -> pd.DataFrame:
    """The points of each condition group `views` names again, on each series type listed there (config `views`,
    series type names as in SERIES_TYPES): the same 3D point on the nearest slice over every series of that type
    in the study (an axial study is often several stacks), with `view` 1, 2, ... in the listed order and
    `view_type` that type's name. A point whose study lacks the type, whose series are not in the cache, or that
    lies outside every such series' slab (more than half a slice gap from every slice) is left out."""
    wanted = {g: list(v) for g, v in views.items() if v}
    columns = [*coords.columns, "view", "view_type"]
    if not wanted or coords.empty:
        return pd.DataFrame(columns=columns)
    description_of = {name: desc for desc, name in SERIES_TYPES.items()}
    series_ids = descriptions.groupby(["study_id", "series_description"])["series_id"].agg(list).to_dict()
    geometry_of: dict[tuple[int, int], Series | None] = {}

    def series(study_id: int, series_id: int) -> Series | None:
        if (study_id, series_id) not in geometry_of:
            path = series_cache_path(cache_dir, split, study_id, series_id)
            geometry_of[study_id, series_id] = load_series(path, pixels=False) if path.is_file() else None
        return geometry_of[study_id, series_id]

    out = []
    for r in coords.to_dict("records"):
        names = wanted.get(condition_group(r["condition"]), [])
        source = series(r["study_id"], r["series_id"]) if names else None
        if source is None or int(r["instance_number"]) not in source.instance_numbers:
            continue
        point = source.pixel_to_patient(source.index_of_instance(r["instance_number"]), r["x"], r["y"])
        for view, name in enumerate(names, 1):
            ids = series_ids.get((r["study_id"], description_of[name]), [])
            stacks = [(int(i), s) for i in ids if (s := series(r["study_id"], int(i))) is not None]
            best = nearest_of(stacks, point, within_slab=True)
            if best is None:
                continue
            series_id, target, j, _ = best
            x, y, _ = target.patient_to_pixel(j, point)
            out.append({**r, "series_id": int(series_id), "instance_number": int(target.instance_numbers[j]),
                        "x": float(x), "y": float(y), "view": view, "view_type": name})
    return pd.DataFrame(out, columns=columns)


def cut_study(rows: list[dict], cache_dir: Path, split: str, spec: CropSpec) -> tuple[list[int], np.ndarray, list[str]]:
    """The stored (8-bit, with margin) crops of a study's crop_table rows: (rows cut, crops of every row (zeros where
    not cut), a note per row not cut: its series not in the cache or its instance not in its series)."""
    loaded: dict[int, Series | None] = {}
    out = np.zeros((len(rows), spec.n_slices, spec.stored_px, spec.stored_px), dtype=np.uint8)
    ok, problems = [], []
    for k, r in enumerate(rows):
        if r["series_id"] not in loaded:
            path = series_cache_path(cache_dir, split, r["study_id"], r["series_id"])
            loaded[r["series_id"]] = load_series(path) if path.is_file() else None
        series = loaded[r["series_id"]]
        if series is None:
            problems.append(f"{r['row_id']}: series {r['series_id']} not in the cache")
            continue
        try:
            index = series.index_of_instance(r["instance_number"])
        except KeyError:
            problems.append(f"{r['row_id']}: instance {r['instance_number']} not in series {r['series_id']}")
            continue
        x, y = r["x"], r["y"]
        if r.get("dslice") or r.get("dx_mm") or r.get("dy_mm"):  # a jittered variant (crops.jittered)
            index = int(np.clip(index + int(r["dslice"]), 0, len(series) - 1))
            row_mm, col_mm = series.spacings[index]
            x, y = x + r["dx_mm"] / col_mm, y + r["dy_mm"] / row_mm
        mm = spec.mm(r["condition"]) * spec.context
        out[k] = to_stored(cut_crop(series, index, x, y, mm, spec.stored_px, spec.n_slices))
        ok.append(k)
    return ok, out, problems


def _cut_args(args: tuple) -> tuple[list[int], np.ndarray, list[str]]:
    return cut_study(*args)


def build_crops(
    coords: pd.DataFrame, cache_dir: Path, split: str, spec: CropSpec, out_dir: Path, workers: int = 2
) -> tuple[np.ndarray, pd.DataFrame]:
    """Cut (or reuse) the crops of every coordinate row; returns a read-only memmap and its index table.

    Rows may carry a `variant` and offsets (crops.jittered): each variant of a point is a crop of its own.

    The crops are stored once per (coordinates, spec) under out_dir as a .npy (8-bit, see cache.to_unit) plus an index
    .csv, keyed by a hash, written atomically; rows whose series or instance is missing are dropped with
    a note in the index file's companion .log.
    """
    table = crop_table(coords)
    key = hashlib.md5(
        (pd.util.hash_pandas_object(table[["row_id", "series_id", "instance_number", "x", "y",
                                           *[c for c in ("variant", *JITTER_COLUMNS, "view") if c in table]]],
                                    index=False).values.tobytes()
         + json.dumps(asdict(spec), sort_keys=True).encode() + split.encode() + str(Path(cache_dir).resolve()).encode()
         + entries_signature(cache_dir, split, zip(table["study_id"], table["series_id"])))
    ).hexdigest()[:12]
    out_dir = Path(out_dir)
    npy, csv = out_dir / f"crops_{split}_{key}.npy", out_dir / f"crops_{split}_{key}.csv"
    if npy.is_file() and csv.is_file():
        return np.load(npy, mmap_mode="r"), pd.read_csv(csv)
    with cache_lock(npy):  # trainings started together (train.py --pipeline --jobs 2) cut the crops once
        if not (npy.is_file() and csv.is_file()):
            _cut_crops(table, cache_dir, split, spec, npy, csv, out_dir / f"crops_{split}_{key}.log", workers)
    return np.load(npy, mmap_mode="r"), pd.read_csv(csv)


def _cut_crops(table: pd.DataFrame, cache_dir: Path, split: str, spec: CropSpec, npy: Path, csv: Path, log: Path,
               workers: int) -> None:
    """build_crops' files: the crops (npy), their index (csv) and the rows dropped (log)."""
    groups = [(g.to_dict("records"), cache_dir, split, spec) for _, g in table.groupby("study_id", sort=True)]
    starts = np.concatenate([[0], np.cumsum([len(g[0]) for g in groups])[:-1]]).astype(int).tolist()
    keep = np.zeros(len(table), dtype=bool)
    problems: list[str] = []
    with atomic_path(npy, ".npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(table), spec.n_slices, spec.stored_px, spec.stored_px))
        for s0, (ok, crops, notes) in zip(starts, progress_map(_cut_args, groups, workers, f"crops {split}", chunksize=2)):
            arr[s0 : s0 + len(crops)] = crops
            keep[[s0 + k for k in ok]] = True
            problems += notes
        arr.flush()
        del arr
        if problems:
            write_text("\n".join(problems) + "\n", log)
        write_csv(table.assign(crop=np.arange(len(table)))[keep], csv)


def centre_unit(crops: torch.Tensor, size_px: int) -> torch.Tensor:
    """Stored 8-bit crops (B, S, P, P) with their margin -> the centre size_px square as float in [0, 1]
    (albumentations' CenterCrop offsets)."""
    top = (crops.shape[-2] - size_px) // 2
    left = (crops.shape[-1] - size_px) // 2
    return to_unit(crops[..., top : top + size_px, left : left + size_px])
