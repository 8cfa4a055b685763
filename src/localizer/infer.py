"""Test-time localization: predicted coordinates in the train_label_coordinates.csv format, per study.

Runs the localizer of every fold found for each series type (their heatmaps averaged) in the plan's order:
searched (sagittal) series give each level's 3D point, the spinal canal re-centred between the foramina
(recentre_midline); a geometry-sliced (axial) series is then read on the slice nearest that point, in
whichever of the study's series covers it, each side on its own side of the canal. A study with a missing or
unreadable series still gets every condition the other series allow.

Studies go in batches: loader processes read each study's series and resize them once for every fold
(StudyInputs) while the models run; each fold sees a whole batch of slices from several studies in one call,
and the axial levels of a batch go in one call too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..core.constants import condition_side
from ..core.device import autocast, inference_dtype, pick_device
from ..core.faults import FaultLog
from ..core.memory import keep_freed_cpu_memory
from ..core.parallel import batches_ahead
from ..core.progress import first_line
from ..core.run_folders import fold_of, localizer_run
from ..data.cache import load_series, series_cache_path, to_stored
from ..data.dicom import Series, nearest_of
from ..training.checkpoint import load_fold_models
from .decode import HeatSource, Reading, Search, coordinate_frame, decode_slice, plane_alternative, read_searched, reading_rows
from .frame import series_stacks, stack_of
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


def recentre_midline(rows: list[dict], series: dict[int, Series]) -> list[dict]:
    """The rows with each midline row (the spinal canal) moved to the slice of its series nearest the depth
    midway between its own slice and the middle of the same level's left and right points (the foramina,
    read on another series), where both sides are there. A canal spans several slices with about the same
    heat; the structures either side of it say where its middle is. series: the Series of each series id."""
    lateral: dict[tuple[str, int], list[np.ndarray]] = {}  # (level, side) -> points
    for r in rows:
        if condition_side(r["condition"]):
            point = patient_points(series[int(r["series_id"])], [r])[0]
            lateral.setdefault((r["level"], condition_side(r["condition"])), []).append(point)
    out = []
    for r in rows:
        left, right = lateral.get((r["level"], 1)), lateral.get((r["level"], -1))
        if condition_side(r["condition"]) != 0 or not left or not right:
            out.append(r)
            continue
        middle = (np.mean(left, 0) + np.mean(right, 0)) / 2
        s = series[int(r["series_id"])]
        depth = s.depths
        own = depth[s.index_of_instance(r["instance_number"])]
        k = int(np.argmin(np.abs(depth - (own + middle @ s.normal) / 2)))
        out.append(dict(r, instance_number=int(s.instance_numbers[k])))
    return out


@dataclass
class StudyInput:
    """What localizing one study needs: its series by description (volumes may be 8-bit) and, per searched
    part, the input stacks of the series it searches (made ahead in a loader process); or why it could not
    be read."""

    study_id: int
    series: dict[str, list[tuple[int, Series]]]
    stacks: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None


class Localizer:
    """The trained localizers of one or more folds, ready to run on batches of studies."""

    def __init__(self, models: dict[str, list[tuple[torch.nn.Module, dict]]], device: torch.device,
                 batch_size: int = 256, search: Search = Search()):
        self.models, self.device, self.dtype = models, device, inference_dtype(device)
        self.batch_size = batch_size  # slices per forward call
        self.search = search  # how the searched series' levels are read, and agreed across a study's series
        # Folds (by position in models[part]) that failed to predict: never run again, each named once.
        self.failed: dict[str, set[int]] = {key: set() for key in models}

    def live(self, part: Part) -> list[tuple[int, torch.nn.Module, dict]]:
        """The part's folds that have not failed: (position, model, config)."""
        return [(j, m, c) for j, (m, c) in enumerate(self.models[part.series_type]) if j not in self.failed[part.series_type]]

    @classmethod
    def from_runs(cls, runs: Path, folds: list[int] | None = None, device: torch.device | None = None,
                  faults: FaultLog | None = None, batch_size: int = 256, search: Search = Search()) -> "Localizer":
        """Every trained fold (or those listed) of each series type's localizer under runs/. A fold whose
        checkpoint does not load, or whose input size differs from the first fold's, is dropped (the other
        folds carry on); a series type left without a model gives no coordinates, and the others carry on."""
        device = device or pick_device()
        faults = faults if faults is not None else FaultLog()
        models: dict[str, list[tuple[torch.nn.Module, dict]]] = {}
        for part in PLAN:
            name = localizer_run(part.series_type)
            models[part.series_type] = []
            for run, model, cfg in load_fold_models(runs, name, device, faults, folds):
                first = models[part.series_type][0][1]["loc"]["size_px"] if models[part.series_type] else cfg["loc"]["size_px"]
                if cfg["loc"]["size_px"] != first:  # heatmaps of different sizes cannot be averaged
                    faults.add("fold", f"{name} fold {fold_of(run)}", f"input size {cfg['loc']['size_px']} px, "
                               f"not the {first} px of the first fold; fold dropped")
                    continue
                models[part.series_type].append((model, cfg))
            if not models[part.series_type]:
                faults.add("localizer", name, f"no loadable fold under {runs}: {', '.join(part.conditions)} get no "
                           "coordinates", conditions=part.conditions)
        return cls(models, device, batch_size, search)

    def size(self, part: Part) -> int:
        """The part's input size (px); every fold of a part has the same."""
        return self.models[part.series_type][0][1]["loc"]["size_px"]

    def sizes(self) -> dict[str, int]:
        """The input size of each part that has a model."""
        return {key: models[0][1]["loc"]["size_px"] for key, models in self.models.items() if models}

    @torch.no_grad()
    def heatmaps(self, part: Part, slices: list[tuple[Series, int]], stacks: np.ndarray | None = None,
                 faults: FaultLog | None = None) -> np.ndarray | None:
        """Mean sigmoid heatmaps of the part's folds for a batch of slices (series, index): (len(slices), C, h, w).

        stacks are the slices' inputs when already made (else stack_of). Each fold runs over the whole batch
        (batch_size slices per call). A fold that fails joins `failed` (never run again) and is named in
        `faults`; None when no fold is left (the series type then gives no coordinates, also named).
        """
        faults = faults if faults is not None else FaultLog()
        if stacks is None:
            size = self.size(part)
            stacks = np.stack([stack_of(s, k, size) for s, k in slices]) if slices else np.zeros((0, 3, size, size), np.float32)
        x = torch.from_numpy(np.ascontiguousarray(stacks)).to(self.device)
        out, used = None, 0
        for j, model, cfg in self.live(part):
            try:
                heat = []
                for i in range(0, len(x), self.batch_size):
                    with autocast(self.device, self.dtype):
                        heat.append(torch.sigmoid(model(x[i : i + self.batch_size]).float()).cpu().numpy())
            except Exception as err:  # noqa: BLE001 - a fold that cannot predict costs that fold only
                self.failed[part.series_type].add(j)
                faults.add("fold", f"{localizer_run(part.series_type)} fold {cfg.get('fold', '?')}",
                           f"failed to predict ({first_line(err)}); fold dropped")
                if not self.live(part):
                    faults.add("localizer", localizer_run(part.series_type), "every fold failed to predict: "
                               f"{', '.join(part.conditions)} get no coordinates", conditions=part.conditions)
                continue
            heat = np.concatenate(heat)
            out, used = (heat if out is None else out + heat), used + 1
        return None if out is None else out / used

    def study(self, study_id: int, series: dict[str, list[tuple[int, Series]]], faults: FaultLog | None = None) -> list[dict]:
        """Coordinate rows of one study from its loaded series, keyed by series description."""
        return self.studies([StudyInput(study_id, series)], faults)

    def studies(self, inputs: list[StudyInput], faults: FaultLog | None = None) -> list[dict]:
        """Coordinate rows of a batch of studies, each part's folds running over all of them at once. A series
        type that fails in a study costs only that study's conditions of that type (named in `faults`).

        The first searched (sagittal) series read gives each level's height, and the later ones are read where
        it put the levels (_searched); then the canal is placed between the foramina, and the geometry-sliced
        (axial) parts are read at those levels."""
        faults = faults if faults is not None else FaultLog()
        rows: dict[int, list[dict]] = {i: [] for i in range(len(inputs))}
        points: dict[int, dict[str, np.ndarray]] = {i: {} for i in range(len(inputs))}  # from the first searched series
        heights: dict[int, dict[str, float]] = {i: {} for i in range(len(inputs))}  # likewise: each level's height
        centred = False
        for part in PLAN:
            if not part.searched and not centred:  # every searched part is read: place the canal, then the levels
                self._recentre(inputs, rows, points, faults)
                centred = True
            if part.series_type not in self.models or not self.live(part):
                continue
            found = self._searched(part, inputs, points, heights, faults) if part.searched else \
                self._sliced(part, inputs, points, faults)
            for i, study_rows in found.items():
                rows[i] += study_rows
        return [r for i in range(len(inputs)) for r in rows[i]]

    @staticmethod
    def _recentre(inputs: list[StudyInput], rows: dict, points: dict, faults: FaultLog) -> None:
        """recentre_midline on each study's rows so far, and its level points again from the moved rows."""
        for i, inp in enumerate(inputs):
            if not rows[i]:
                continue
            by_id = {sid: s for group in inp.series.values() for sid, s in group}
            try:
                moved = recentre_midline(rows[i], by_id)
                first = int(moved[0]["series_id"])  # the series the level points came from
                points[i] = level_points(by_id[first], [r for r in moved if int(r["series_id"]) == first])
                rows[i] = moved
            except Exception as err:  # noqa: BLE001 - the study keeps its rows as they were
                faults.add("study", f"study {inp.study_id}", f"re-centring the spinal canal failed "
                           f"({type(err).__name__}: {err}); its rows kept as read", study_id=inp.study_id)

    @staticmethod
    def _failed(faults: FaultLog, part: Part, study_id: int, err: Exception) -> None:
        faults.add("study", f"study {study_id}", f"{part.series_type} localization failed ({type(err).__name__}: {err})",
                   study_id=study_id, conditions=part.conditions)

    def _searched(self, part: Part, inputs: list[StudyInput], points: dict, heights: dict,
                  faults: FaultLog) -> dict[int, list[dict]]:
        """A searched part over every slice of every series of its type in each study, in one batch. A study
        with several series of the type keeps the reading of the one whose rows are the most confident on
        average (a repeated acquisition may be blurred, cut short or of another part of the spine).

        The first searched part read for a study (Sagittal T2: one canal, the surest count) leaves each level's
        height in `heights`; a later one is read again anchored there (decode.read_searched), so a foramen's
        heat on the next disc, or between two, does not name a level a disc away from the canal's. A failure
        there keeps the series' own reading, named in `faults`. search.level_sd_mm 0: each series on its own."""
        size = self.size(part)
        todo, stacks = [], []
        errors: dict[int, Exception] = {}  # a study is named only when none of its series of the type is read
        for i, inp in enumerate(inputs):
            for n, (sid, s) in enumerate(inp.series.get(part.description, [])):
                made = inp.stacks.get(part.series_type) if n == 0 else None
                try:
                    stacks.append(made if made is not None and made.shape[-1] == size else series_stacks(s, size))
                except Exception as err:  # noqa: BLE001 - one series type of one study must not take the others down
                    errors.setdefault(i, err)
                    continue
                todo.append((i, sid, s))
        heat = None
        if todo:
            heat = self.heatmaps(part, [(s, k) for _, _, s in todo for k in range(len(s))], np.concatenate(stacks), faults)
        best: dict[int, tuple[float, dict[str, Reading], tuple]] = {}
        start = 0
        for i, sid, s in todo if heat is not None else []:
            h, start = heat[start : start + len(s)], start + len(s)
            src = HeatSource(inputs[i].study_id, sid, s, size)
            midline = np.mean(list(points[i].values()), 0) if points[i] else None
            try:
                found = read_searched(part, src, h, np.arange(len(s)), midline, self.search)
            except Exception as err:  # noqa: BLE001 - one series type of one study must not take the others down
                errors.setdefault(i, err)
                continue
            found_rows = reading_rows(found)
            sure = float(np.mean([r["confidence"] for r in found_rows])) if found_rows else -1.0
            if i not in best or sure > best[i][0]:
                best[i] = (sure, found, (src, h, midline))
        for i, err in errors.items():
            if i not in best:
                self._failed(faults, part, inputs[i].study_id, err)
        out: dict[int, list[dict]] = {}
        for i, (_, found, (src, h, midline)) in best.items():
            if not heights[i]:  # the first searched part read: the lead
                by_level: dict[str, list[float]] = {}
                for reading in found.values():
                    for level, height in reading.heights.items():
                        by_level.setdefault(level, []).append(height)
                heights[i] = {level: float(np.mean(hs)) for level, hs in by_level.items()}
            elif self.search.level_sd_mm > 0:
                try:
                    found = read_searched(part, src, h, np.arange(len(src.series)), midline, self.search,
                                          anchors=heights[i])
                except Exception as err:  # noqa: BLE001 - the study keeps the series' own reading
                    faults.add("study", f"study {inputs[i].study_id}", f"agreeing on the levels across series "
                               f"failed ({type(err).__name__}: {err}); each series' own reading kept",
                               study_id=inputs[i].study_id)
            out[i] = reading_rows(found)
            points[i] = points[i] or level_points(src.series, out[i])
        return out

    def _sliced(self, part: Part, inputs: list[StudyInput], points: dict, faults: FaultLog) -> dict[int, list[dict]]:
        """A geometry-sliced part on each level's nearest slice in any of the study's series of its type, every
        level of every study in one batch."""
        todo = []  # (study position, level, series id, series, slice)
        for i, inp in enumerate(inputs):
            try:
                for level, point in points[i].items():
                    best = nearest_of(inp.series.get(part.description, []), point)
                    if best is not None:
                        todo.append((i, level, *best[:3]))
            except Exception as err:  # noqa: BLE001
                self._failed(faults, part, inp.study_id, err)
                todo = [t for t in todo if t[0] != i]
        heat = self.heatmaps(part, [(s, k) for _, _, _, s, k in todo], faults=faults) if todo else None
        out: dict[int, list[dict]] = {}
        failed: set[int] = set()
        for j, (i, level, sid, s, k) in enumerate(todo if heat is not None else []):
            try:
                point = points[i][level]
                out.setdefault(i, []).extend(
                    decode_slice(part, HeatSource(inputs[i].study_id, sid, s, self.size(part)), k, heat[j, 0], level,
                                 midline=point, alternative=plane_alternative(s, k, point, self.search.slice_sd_mm)))
            except Exception as err:  # noqa: BLE001 - costs this study's rows of this series type
                if i not in failed:
                    self._failed(faults, part, inputs[i].study_id, err)
                failed.add(i)
        return {i: found for i, found in out.items() if i not in failed}


def load_study_series(cache_dir: Path, split: str, study_id: int, table: pd.DataFrame) -> dict[str, list[tuple[int, Series]]]:
    """A study's cached series keyed by description; a series not in the cache (missing or unreadable, which
    cache.prepare has named) is skipped."""
    series: dict[str, list[tuple[int, Series]]] = {}
    for r in table.itertuples():
        path = series_cache_path(cache_dir, split, study_id, r.series_id)
        if path.is_file():
            series.setdefault(r.series_description, []).append((int(r.series_id), load_series(path)))
    return series


class StudyInputs(Dataset):
    """StudyInput per study of a series table, for loader processes: the cached series (volumes 8-bit, a
    quarter of the bytes to pass back) and each searched part's input stacks at `sizes` (part key -> px)."""

    def __init__(self, table: pd.DataFrame, cache_dir: Path, split: str, sizes: dict[str, int]):
        self.groups = [(int(s), g) for s, g in table.groupby("study_id", sort=False)]
        self.cache_dir, self.split, self.sizes = Path(cache_dir), split, sizes

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> StudyInput:
        study_id, table = self.groups[i]
        try:
            series = load_study_series(self.cache_dir, self.split, study_id, table)
            stacks = {p.series_type: series_stacks(series[p.description][0][1], self.sizes[p.series_type])
                      for p in PLAN if p.searched and p.series_type in self.sizes and series.get(p.description)}
            small = {d: [(sid, dataclasses.replace(s, volume=to_stored(s.volume))) for sid, s in group]
                     for d, group in series.items()}
            return StudyInput(study_id, small, stacks)
        except Exception as err:  # noqa: BLE001 - named by the caller; the other studies carry on
            return StudyInput(study_id, {}, error=f"{type(err).__name__}: {err}")


def localize(table: pd.DataFrame, cache_dir: Path, split: str, localizer: Localizer,
             faults: FaultLog | None = None, workers: int = 0, studies_per_batch: int = 8) -> pd.DataFrame:
    """Predicted coordinates for every study of a series table (study_id, series_id, series_description) whose
    series are in the cache (cache.prepare), in batches of studies read ahead by `workers` loader processes.
    A study that fails costs only its own rows (named in `faults`)."""
    faults = faults if faults is not None else FaultLog()
    if localizer.device.type == "cpu":
        keep_freed_cpu_memory()  # batched forwards would otherwise fault in fresh pages on every call
    rows: list[dict] = []
    inputs = StudyInputs(table, cache_dir, split, localizer.sizes())
    for batch in batches_ahead(inputs, studies_per_batch, workers, "localize"):
        for item in batch:
            if item.error is not None:
                faults.add("study", f"study {item.study_id}", f"localization failed ({item.error})",
                           study_id=item.study_id)
        good = [item for item in batch if item.error is None]
        try:
            rows += localizer.studies(good, faults)
        except Exception as err:  # noqa: BLE001 - one broken batch must not stop the others
            for item in good:
                faults.add("study", f"study {item.study_id}", f"localization failed ({type(err).__name__}: {err})",
                           study_id=item.study_id)
    return coordinate_frame(rows)
