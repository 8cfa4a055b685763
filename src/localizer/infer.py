"""Test-time localization: predicted coordinates in the train_label_coordinates.csv format, per study.

Runs the localizer of every fold found for each series type (their heatmaps averaged) in the plan's order:
searched (sagittal) series give each level's 3D point; a geometry-sliced (axial) series is then read on
the slice nearest that point, in whichever of the study's series covers it. A study with a missing or
unreadable series still gets every condition the other series allow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..cache import load_series, series_cache_path
from ..constants import PREDICTED_COORDINATE_COLUMNS
from ..device import autocast, inference_dtype, pick_device
from ..dicom import Series
from ..faults import FaultLog
from ..run_folders import BEST, fold_of, load_model, localizer_run, trained_folds
from .data import stack_of
from .decode import decode_searched, decode_slice
from .plan import PLAN, Part


def patient_points(series: Series, rows: list[dict]) -> list[np.ndarray]:
    """Patient-space (mm) position of each coordinate row on its slice of `series`."""
    return [series.pixel_to_patient(series.index_of_instance(r["instance_number"]), r["x"], r["y"]) for r in rows]


def level_points(series: Series, rows: list[dict]) -> dict[str, np.ndarray]:
    """Each level's 3D point: the mean of its rows' points (the canal, or midway between two foramina)."""
    by_level: dict[str, list[np.ndarray]] = {}
    for r, p in zip(rows, patient_points(series, rows)):
        by_level.setdefault(r["level"], []).append(p)
    return {level: np.mean(points, 0) for level, points in by_level.items()}


class Localizer:
    """The trained localizers of one or more folds, ready to run on cached series."""

    def __init__(self, models: dict[str, list[tuple[torch.nn.Module, dict]]], device: torch.device):
        self.models, self.device, self.dtype = models, device, inference_dtype(device)

    @classmethod
    def from_runs(cls, runs: Path, folds: list[int] | None = None, device: torch.device | None = None,
                  faults: FaultLog | None = None) -> "Localizer":
        """Every trained fold (or those listed) of each series type's localizer under runs/. A fold whose
        checkpoint does not load is dropped (the other folds carry on); a series type left without a model
        gives no coordinates, and the other series types carry on."""
        device = device or pick_device()
        faults = faults if faults is not None else FaultLog()
        models: dict[str, list[tuple[torch.nn.Module, dict]]] = {}
        for part in PLAN:
            name = localizer_run(part.key)
            models[part.key] = []
            for run in trained_folds(runs, name, folds):
                try:
                    models[part.key].append(load_model(run, device))
                except Exception as err:  # noqa: BLE001 - a bad checkpoint costs its fold only
                    faults.add("fold", f"{name} fold {fold_of(run)}", f"{run / BEST} does not load "
                               f"({type(err).__name__}: {str(err)[:200]}); fold dropped")
            if not models[part.key]:
                faults.add("localizer", name, f"no loadable fold under {runs}: {', '.join(part.conditions)} get no "
                           "coordinates", conditions=part.conditions)
        return cls(models, device)

    @torch.no_grad()
    def heatmaps(self, part: Part, series: Series, ks: list[int]) -> np.ndarray:
        """Mean sigmoid heatmaps of the part's models for slices ks: (len(ks), C, h, w)."""
        out = None
        for model, cfg in self.models[part.key]:
            size = cfg["loc"]["size_px"]
            x = torch.from_numpy(np.stack([stack_of(series, k, size) for k in ks])).to(self.device)
            with autocast(self.device, self.dtype):
                heat = torch.sigmoid(model(x).float()).cpu().numpy()
            out = heat if out is None else out + heat
        return out / len(self.models[part.key])

    def size(self, part: Part) -> int:
        return self.models[part.key][0][1]["loc"]["size_px"]

    def study(self, study_id: int, series: dict[str, list[tuple[int, Series]]], faults: FaultLog | None = None) -> list[dict]:
        """Coordinate rows of one study from its loaded series, keyed by series description. A series type
        that fails costs only its own conditions (named in `faults`)."""
        rows: list[dict] = []
        points: dict[str, np.ndarray] = {}  # each level's 3D point, from the first searched series that has it
        for part in PLAN:
            available = series.get(part.description, [])
            if not available or not self.models.get(part.key):
                continue
            try:
                found, points = self._part(part, study_id, available, points)
            except Exception as err:  # noqa: BLE001 - one series type must not take the others down
                (faults if faults is not None else FaultLog()).add(
                    "study", f"study {study_id}", f"{part.key} localization failed ({type(err).__name__}: {err})",
                    study_id=study_id, conditions=part.conditions)
                continue
            rows += found
        return rows

    def _part(self, part: Part, study_id: int, available: list[tuple[int, Series]],
              points: dict[str, np.ndarray]) -> tuple[list[dict], dict[str, np.ndarray]]:
        """One series type's rows of a study, and the level points (set by the first searched series)."""
        if part.searched:
            sid, s = available[0]
            ks = np.arange(len(s))
            midline = np.mean(list(points.values()), 0) if points else None
            found = decode_searched(part, s, self.heatmaps(part, s, list(ks)), ks, self.size(part), study_id, sid,
                                    midline=midline)
            return found, points or level_points(s, found)
        rows: list[dict] = []
        for level, point in points.items():
            best = None
            for sid, s in available:
                k, dist = s.nearest_slice(point)
                if k >= 0 and (best is None or dist < best[0]):
                    best = (dist, sid, s, k)
            if best is not None:
                _, sid, s, k = best
                heat = self.heatmaps(part, s, [k])[0, 0]
                rows += decode_slice(part, s, k, heat, self.size(part), study_id, sid, level)
        return rows, points


def load_study_series(cache_dir: Path, split: str, study_id: int, table: pd.DataFrame) -> dict[str, list[tuple[int, Series]]]:
    """A study's cached series keyed by description; a series not in the cache (missing or unreadable, which
    cache.prepare has named) is skipped."""
    series: dict[str, list[tuple[int, Series]]] = {}
    for r in table.itertuples():
        path = series_cache_path(cache_dir, split, study_id, r.series_id)
        if path.is_file():
            series.setdefault(r.series_description, []).append((int(r.series_id), load_series(path)))
    return series


def localize(table: pd.DataFrame, cache_dir: Path, split: str, localizer: Localizer,
             faults: FaultLog | None = None) -> pd.DataFrame:
    """Predicted coordinates for every study of a series table (study_id, series_id, series_description) whose
    series are in the cache (cache.prepare). A study that fails costs only its own rows (named in `faults`)."""
    faults = faults if faults is not None else FaultLog()
    rows: list[dict] = []
    for study_id, g in tqdm(table.groupby("study_id", sort=False), desc="localize"):
        try:
            rows += localizer.study(int(study_id), load_study_series(cache_dir, split, int(study_id), g), faults)
        except Exception as err:  # noqa: BLE001 - one broken study must not stop the others
            faults.add("study", f"study {study_id}", f"localization failed ({type(err).__name__}: {err})",
                       study_id=int(study_id))
    return pd.DataFrame(rows, columns=list(PREDICTED_COORDINATE_COLUMNS))
