"""Test-time localization: predicted coordinates in the train_label_coordinates.csv format, per study.

Runs the three heatmap models of every fold found under runs/ (their heatmaps averaged), decodes the
sagittal levels, assigns axial slices to levels through 3D geometry, and finds the subarticular points.
A study with a missing or unreadable series still gets every condition the other series allow.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .cache import load_series, prepare, series_cache_path
from .config import LOCALIZER_PARTS
from .constants import LEVELS
from .dicom import Series
from .inference import find_runs, load_model
from .models import autocast
from .localization import COORD_COLUMNS, SERIES_TYPES, decode_axial, decode_sagittal, stack_of
from .tables import load_series_descriptions


def patient_points(series: Series, rows: list[dict]) -> list[np.ndarray]:
    """Patient-space (mm) position of each coordinate row on its slice of `series`."""
    return [series.pixel_to_patient(series.index_of_instance(r["instance_number"]), r["x"], r["y"]) for r in rows]


class Localizer:
    """The localizer models of one or more folds, ready to run on cached series."""

    def __init__(self, runs: Path, folds: list[int] | None = None, device: torch.device | None = None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models: dict[str, list[tuple[torch.nn.Module, dict]]] = {}
        for part in LOCALIZER_PARTS:
            dirs = find_runs(runs, f"localizer_{part}", folds)
            self.models[part] = [load_model(d, self.device) for d in dirs]
            if not dirs:
                warnings.warn(f"no trained localizer_{part} under {runs}: its conditions get no coordinates", stacklevel=2)

    @torch.no_grad()
    def heatmaps(self, part: str, series: Series, ks: list[int]) -> np.ndarray:
        """Mean sigmoid heatmaps of the part's models for slices ks: (len(ks), C, h, w)."""
        out = None
        for model, cfg in self.models[part]:
            size = cfg["loc"]["size_px"]
            x = torch.from_numpy(np.stack([stack_of(series, k, size) for k in ks])).to(self.device)
            with autocast(self.device, torch.bfloat16 if self.device.type == "cuda" else None):
                heat = torch.sigmoid(model(x).float()).cpu().numpy()
            out = heat if out is None else out + heat
        return out / len(self.models[part])

    def size(self, part: str) -> int:
        return self.models[part][0][1]["loc"]["size_px"]

    def study(self, study_id: int, series: dict[str, list[tuple[int, Series]]]) -> list[dict]:
        """Coordinate rows of one study from its loaded series, keyed by series description."""
        rows: list[dict] = []
        level_points: dict[str, np.ndarray] = {}
        sag_t2 = series.get(SERIES_TYPES["sagittal_t2"], [])
        if sag_t2 and self.models["sagittal_t2"]:
            sid, s = sag_t2[0]
            ks = np.arange(len(s))
            found = decode_sagittal("sagittal_t2", s, self.heatmaps("sagittal_t2", s, list(ks)), ks,
                                    self.size("sagittal_t2"), study_id, sid)
            rows += found
            level_points = {r["level"]: p for r, p in zip(found, patient_points(s, found))}
        sag_t1 = series.get(SERIES_TYPES["sagittal_t1"], [])
        if sag_t1 and self.models["sagittal_t1"]:
            sid, s = sag_t1[0]
            ks = np.arange(len(s))
            midline = np.mean(list(level_points.values()), 0) if level_points else None
            found = decode_sagittal("sagittal_t1", s, self.heatmaps("sagittal_t1", s, list(ks)), ks,
                                    self.size("sagittal_t1"), study_id, sid, midline=midline)
            rows += found
            if not level_points:  # no sagittal T2: the levels' 3D points are midway between the foramina
                by_level: dict[str, list[np.ndarray]] = {}
                for r, p in zip(found, patient_points(s, found)):
                    by_level.setdefault(r["level"], []).append(p)
                level_points = {lv: np.mean(p, 0) for lv, p in by_level.items()}
        axials = series.get(SERIES_TYPES["axial"], [])
        if axials and self.models["axial"]:
            for level in LEVELS:
                if level not in level_points:
                    continue
                best = None
                for sid, s in axials:
                    k, dist = s.nearest_slice(level_points[level])
                    if k >= 0 and (best is None or dist < best[0]):
                        best = (dist, sid, s, k)
                if best is None:
                    continue
                _, sid, s, k = best
                heat = self.heatmaps("axial", s, [k])[0, 0]
                rows += decode_axial(s, k, heat, self.size("axial"), study_id, sid, level)
        return rows


def localize(data_dir: Path, split: str, runs: Path, cache_dir: Path, study_ids: list[int] | None = None,
             folds: list[int] | None = None, workers: int = 2, device: torch.device | None = None) -> pd.DataFrame:
    """Predicted coordinates for every study of {split}_series_descriptions.csv (or those listed)."""
    table = load_series_descriptions(Path(data_dir) / f"{split}_series_descriptions.csv", unknown="warn")
    if study_ids is not None:
        table = table[table["study_id"].isin(set(int(s) for s in study_ids))]
    prepare(data_dir, cache_dir, split, workers=workers)
    localizer = Localizer(runs, folds, device)
    rows: list[dict] = []
    for study_id, g in tqdm(table.groupby("study_id", sort=False), desc="localize"):
        series: dict[str, list[tuple[int, Series]]] = {}
        for r in g.itertuples():
            path = series_cache_path(cache_dir, split, study_id, r.series_id)
            if path.is_file():
                series.setdefault(r.series_description, []).append((int(r.series_id), load_series(path)))
            else:
                warnings.warn(f"study {study_id}: series {r.series_id} ({r.series_description}) unreadable or missing; "
                              "using the other series", stacklevel=2)
        try:
            rows += localizer.study(int(study_id), series)
        except Exception as err:  # noqa: BLE001 - one broken study must not stop the others
            warnings.warn(f"study {study_id}: localization failed ({type(err).__name__}: {err})", stacklevel=2)
    return pd.DataFrame(rows, columns=COORD_COLUMNS)


def summarize_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """Per condition: points, misses, median and 95th-percentile error (mm, px), share within 5 mm,
    share on the right slice (+-1). A labelled point without a prediction counts as outside and wrong."""
    rows = []
    for condition, g in errors.groupby("condition", sort=False):
        found = g["error_mm"].notna()
        rows.append({
            "condition": condition, "points": len(g), "missed": int((~found).sum()),
            "median_mm": g["error_mm"].median(), "p95_mm": g["error_mm"].quantile(0.95),
            "median_px": g["error_px"].median(), "p95_px": g["error_px"].quantile(0.95),
            "within_5mm": float((g["error_mm"] <= 5.0).mean()), "right_slice": float(g["instance_ok"].mean()),
        })
    return pd.DataFrame(rows)
