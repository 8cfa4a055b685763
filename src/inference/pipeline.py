"""The offline pipeline behind infer.py: localize, cut crops, run every fold of every classifier, ensemble,
write every row.

Top-down: the runs to use come from run_folders.py, the series are decoded once into the cache (cache.prepare),
the localizer gives coordinates (localizer.infer), the classifiers give probabilities (classify), the
ensemble blends them (ensemble), and the training prior fills every row nothing else reached.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.atomic import write_csv
from ..core.constants import PREDICTED_COORDINATE_COLUMNS, TARGETS, parse_row_id
from ..core.faults import FaultLog
from ..core.metric import overlay, prior_rows, prior_table, solution_frame
from ..core.parallel import loader_workers
from ..core.progress import log
from ..core.run_folders import classifier_runs, ensemble_file, is_run_name
from ..data.cache import prepare
from ..data.dicom import GEOMETRY_FALLBACK
from ..data.tables import (
    DataError,
    bad_row_ids,
    load_coordinates,
    load_row_ids,
    load_series_descriptions,
    load_train,
    submission_row_ids,
)
from ..localizer.decode import Search
from ..localizer.infer import Localizer, localize
from . import ensemble as ensemble_lib
from .classify import run_classifiers
from .context import InferenceContext
from .final_stage import apply_stage
from .stacker import valid_stacker


def series_table(data_dir: Path, split: str, study_ids: list[int] | None = None,
                 problems: list[tuple[int | None, bool, str]] | None = None) -> pd.DataFrame:
    """{split}_series_descriptions.csv read leniently (bad lines dropped and named), of some studies if given."""
    table = load_series_descriptions(Path(data_dir) / f"{split}_series_descriptions.csv", strict=False, problems=problems)
    return table if study_ids is None else table[table["study_id"].isin(set(int(s) for s in study_ids))]


def expected_rows(data_dir: Path, split: str, faults: FaultLog | None = None) -> list[str]:
    """sample_submission.csv's rows in its order when it is there, else 25 rows per study of the series file.

    Every row of sample_submission is kept, whatever it holds: a row id that is not a study id and a label
    column is named in `faults` and gets the prior (uniform where not even its condition group is known).
    """
    faults = faults if faults is not None else FaultLog()
    sample = Path(data_dir) / "sample_submission.csv"
    if split == "test" and sample.is_file():
        problems: list[str] = []
        try:
            rows = pd.Series(load_row_ids(sample, problems), dtype=str)
        except DataError as err:
            faults.add("input", "sample_submission.csv", f"{err}; 25 rows per study of the series file instead")
        else:
            for text in problems:
                faults.add("repair", "sample_submission.csv", text)
            for i in bad_row_ids(rows):
                faults.add("input", f"row {rows.iloc[i]!r}", f"{sample}: row {rows.iloc[i]!r} is not a study id and a "
                           "label column; the row is written with the prior", rows=1)
            return rows.tolist()
    return submission_row_ids(series_table(data_dir, split)["study_id"].drop_duplicates().tolist())


def prior_frame(row_ids: list[str], data_dir: Path, fitted: dict) -> pd.DataFrame:
    """The training prior for every row: from ensemble.json, else the data's train.csv, else real-data rates.
    A row without a known condition group gets 1/3 each."""
    table = fitted.get("prior")
    if table is None:
        train_csv = Path(data_dir) / "train.csv"
        solution = None
        if train_csv.is_file():
            try:
                solution = solution_frame(load_train(train_csv))
            except DataError as err:
                warnings.warn(f"{err}; using the real data's class rates as the prior", stacklevel=2)
        table = prior_table(solution)
    return prior_rows(table, row_ids)


def finalize(submission: pd.DataFrame, row_ids: list[str], prior: pd.DataFrame, faults: FaultLog | None = None,
             what: str = "the submission") -> pd.DataFrame:
    """Rows in the expected order; any invalid row (non-finite, negative, summing to 0) replaced by the prior
    and named in `faults` (unit 'predictions'); every row summing to 1."""
    values = submission.set_index("row_id").loc[row_ids, list(TARGETS)].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values).all(1) | (values < 0).any(1) | ~(values.sum(1) > 0)
    if bad.any():
        ids = np.asarray(row_ids)[bad]
        (faults if faults is not None else FaultLog()).add(
            "predictions", what, f"{int(bad.sum())} rows had non-finite or invalid predictions (e.g. {ids[0]}); "
            "they get the prior", rows=int(bad.sum()))
        values[bad] = prior.set_index("row_id").loc[ids, list(TARGETS)].to_numpy()
    result = pd.DataFrame(values / values.sum(1, keepdims=True), columns=list(TARGETS))
    result.insert(0, "row_id", row_ids)
    return result


def faults_path(out: Path) -> Path:
    """Where the degradation summary of a submission is written: beside it, as <name>.faults.json."""
    return Path(out).with_suffix(".faults.json")


def coordinates_path(out: Path) -> Path:
    """Where the coordinates a submission's crops were cut at are written: beside it, as <name>.coordinates.csv."""
    return Path(out).with_suffix(".coordinates.csv")


def _members(fitted: dict, runs: Path, faults: FaultLog) -> list[str]:
    """The ensemble's members (every classifier run without a fitted ensemble), each a run folder inside runs/."""
    named = list(fitted.get("weights", {}))
    if not named:
        return classifier_runs(runs, faults=faults)
    for name in named:
        if not is_run_name(runs, name):
            faults.add("member", str(name), f"named in the ensemble file but not a run folder inside {runs}; ignored")
    return [n for n in named if is_run_name(runs, n)]


def _combine(frames: dict[str, pd.DataFrame], fitted: dict, faults: FaultLog) -> pd.DataFrame:
    """The members' predictions made one: by the stacker of ensemble.json when it has one that fits the members
    that predicted (else named, and the weighted blend), or by the weights and temperatures."""
    if "stacker" in fitted:
        why = valid_stacker(fitted["stacker"], list(frames))
        if why is not None:
            faults.add("ensemble", "stacker", f"{why}; the weighted blend is used instead")
            fitted = {k: v for k, v in fitted.items() if k != "stacker"}
    return apply_stage(fitted, frames)


def _localize(ctx: InferenceContext, study_ids: list[int]) -> pd.DataFrame:
    """Stage 1 for the studies: their series lines read, decoded once, localized; every problem named per study.
    With ctx.points, the crops' points are that table's rows of the studies instead (no localizer runs)."""
    table = _read_series(ctx, study_ids)
    if ctx.points is not None:
        points = load_coordinates(ctx.points)
        return points[points["study_id"].isin(study_ids)].reset_index(drop=True)
    search = Search() if ctx.slice_sd_mm is None else Search(slice_sd_mm=ctx.slice_sd_mm)
    localizer = Localizer.from_runs(ctx.runs, device=ctx.device, faults=ctx.faults, search=search)
    return localize(table, ctx.cache_dir, ctx.split, localizer,
                    ctx.faults, workers=loader_workers(ctx.workers, ctx.device.type), studies_per_batch=ctx.studies_per_batch)


def _read_series(ctx: InferenceContext, study_ids: list[int]) -> pd.DataFrame:
    """The studies' series lines, each series decoded once into the cache; every problem named per study."""
    problems: list[tuple[int | None, bool, str]] = []
    faults, split = ctx.faults, ctx.split
    table = series_table(ctx.data_dir, split, study_ids, problems)
    listed, wanted = set(table["study_id"]), set(study_ids)
    for study_id in sorted(wanted - listed):
        faults.add("study", f"study {study_id}", f"no series listed in {split}_series_descriptions.csv",
                   study_id=study_id)
    prepare(ctx.data_dir, ctx.cache_dir, split, workers=ctx.workers, series=table, problems=problems)
    by_study: dict[tuple[int | None, bool], list[str]] = {}
    for study_id, lost, text in problems:
        if study_id is None or study_id in wanted:
            by_study.setdefault((study_id, lost), []).append(text)
    for (study_id, lost), texts in by_study.items():
        # One line per study: a lost series costs rows ('study'); a repaired one is only named ('repair'),
        # unless its geometry fell back ('geometry': its crops may be off, a degradation under --strict).
        unit = "input" if study_id is None else "study" if lost else \
            "geometry" if any(GEOMETRY_FALLBACK in t for t in texts) else "repair"
        faults.add(unit, "series descriptions" if study_id is None else f"study {study_id}", "; ".join(texts),
                   study_id=study_id)
    return table


def make_submission(ctx: InferenceContext, studies: list[int] | None = None) -> pd.DataFrame:
    """The whole offline pipeline; returns the submission written to ctx.out (every expected row, valid).

    A fault costs only the study, fold, member or series type it touches; each is named in ctx.faults, printed
    in one summary and written beside the submission (faults_path), as are the predicted coordinates
    (coordinates_path). studies limits the rows to those studies.
    """
    started = time.time()
    faults, out = ctx.faults, Path(ctx.out)
    row_ids = expected_rows(ctx.data_dir, ctx.split, faults)
    if studies is not None:
        keep = {int(x) for x in studies}
        row_ids = [r for r in row_ids if parse_row_id(r)[0] in keep]
    fitted = ensemble_lib.load(ctx.ensemble_path if ctx.ensemble_path is not None else ensemble_file(ctx.runs), faults)
    prior = prior_frame(row_ids, ctx.data_dir, fitted)
    study_ids = sorted({s for s in (parse_row_id(r)[0] for r in row_ids) if s is not None})
    coords = pd.DataFrame(columns=list(PREDICTED_COORDINATE_COLUMNS))
    try:
        coords = _localize(ctx, study_ids)
    except Exception as err:  # noqa: BLE001 - the prior still gives a complete submission
        faults.add("models", "localization", f"failed ({type(err).__name__}: {err}); every row gets the prior")
    frames, submission, modelled = _classify(ctx, coords, fitted, prior, row_ids)
    result = finalize(submission, row_ids, prior, faults)
    write_csv(result, out)
    faults.count_rows(row_ids, set(row_ids) - modelled)
    _extras(ctx, frames, prior, row_ids, coords, result)
    late: OSError | None = None  # the faults file could not be written (a full disk): said after the summary
    try:
        faults.write(faults_path(out))
    except OSError as err:
        late = err
    seconds = time.time() - started
    log(f"wrote {out}: {len(result)} rows for {len(study_ids)} studies "
          f"({coords['study_id'].nunique() if len(coords) else 0} localized, {len(modelled)} rows from the models); "
          f"{seconds / max(len(study_ids), 1):.2f} s per study")
    print(faults.summary())
    if late is not None:
        raise late
    return result


def _classify(ctx: InferenceContext, coords: pd.DataFrame, fitted: dict, prior: pd.DataFrame,
              row_ids: list[str]) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, set[str]]:
    """Stage 2: each member's predictions at the coordinates, combined over the prior; returns the members'
    frames, the submission and the rows a model predicted (the prior alone when classification fails)."""
    faults = ctx.faults
    frames: dict[str, pd.DataFrame] = {}
    try:
        if len(coords):
            frames = run_classifiers(coords, _members(fitted, ctx.runs, faults), ctx)
        if frames:
            blended = _combine(frames, fitted, faults)
            return frames, overlay(prior, blended), set(blended["row_id"]) & set(row_ids)
    except Exception as err:  # noqa: BLE001 - the prior still gives a complete submission
        faults.add("models", "classification", f"failed ({type(err).__name__}: {err}); the rows keep the prior")
        return {}, prior, set()
    if row_ids and not faults.of("models"):
        faults.add("models", "classifiers", f"no classifier could be used (runs: {ctx.runs}); every row gets the prior")
    return frames, prior, set()


def _extras(ctx: InferenceContext, frames: dict, prior: pd.DataFrame, row_ids: list[str], coords: pd.DataFrame,
            result: pd.DataFrame) -> None:
    """The coordinates and per-model submissions: extras whose failure never touches the written submission."""
    out, faults = Path(ctx.out), ctx.faults
    try:
        write_csv(coords, coordinates_path(out))
        if ctx.per_model:
            for name, frame in frames.items():
                write_csv(finalize(overlay(prior, frame), row_ids, prior, faults, f"submission_{name}.csv"),
                          out.with_name(f"submission_{name}.csv"))
    except Exception as err:  # noqa: BLE001 - the submission is already written
        faults.add("output", "files beside the submission", f"coordinates or per-model submissions "
                   f"failed ({type(err).__name__}: {err}); {out} itself is complete")
