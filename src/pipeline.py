"""The offline pipeline behind infer.py: localize, cut crops, run every fold of every classifier, ensemble,
write every row.

Top-down: the runs to use come from runs.py, the series are decoded once into the cache (cache.prepare),
the localizer gives coordinates (localizer.infer), the classifiers give probabilities (classify), the
ensemble blends them (ensemble), and the training prior fills every row nothing else reached.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import ensemble as ensemble_lib
from .atomic import write_csv
from .cache import prepare
from .classify import run_classifiers
from .constants import PREDICTED_COORDINATE_COLUMNS, TARGETS, row_study_ids
from .device import pick_device
from .explain import explain
from .localizer.infer import Localizer, localize
from .metric import overlay, prior_rows, prior_table
from .runs import classifier_runs, ensemble_file
from .tables import DataError, load_series_descriptions, load_submission, load_train, solution_frame, submission_row_ids


def series_table(data_dir: Path, split: str, study_ids: list[int] | None = None) -> pd.DataFrame:
    """{split}_series_descriptions.csv (unknown descriptions dropped with a warning), of some studies if given."""
    table = load_series_descriptions(Path(data_dir) / f"{split}_series_descriptions.csv", unknown="warn")
    return table if study_ids is None else table[table["study_id"].isin(set(int(s) for s in study_ids))]


def expected_rows(data_dir: Path, split: str) -> list[str]:
    """sample_submission.csv's rows in its order when it is there, else 25 rows per study of the series file."""
    sample = Path(data_dir) / "sample_submission.csv"
    if split == "test" and sample.is_file():
        return load_submission(sample)["row_id"].tolist()
    return submission_row_ids(series_table(data_dir, split)["study_id"].drop_duplicates().tolist())


def prior_frame(row_ids: list[str], data_dir: Path, fitted: dict) -> pd.DataFrame:
    """The training prior for every row: from ensemble.json, else the data's train.csv, else real-data rates."""
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


def finalize(submission: pd.DataFrame, row_ids: list[str], prior: pd.DataFrame) -> pd.DataFrame:
    """Rows in the expected order; any invalid row replaced by the prior; every row summing to 1."""
    values = submission.set_index("row_id").loc[row_ids, list(TARGETS)].to_numpy(dtype=float)
    bad = ~np.isfinite(values).all(1) | (values < 0).any(1) | (values.sum(1) <= 0)
    if bad.any():
        warnings.warn(f"{int(bad.sum())} rows had invalid predictions; they get the prior", stacklevel=2)
        values[bad] = prior.set_index("row_id").loc[np.asarray(row_ids)[bad], list(TARGETS)].to_numpy()
    result = pd.DataFrame(values / values.sum(1, keepdims=True), columns=list(TARGETS))
    result.insert(0, "row_id", row_ids)
    return result


def make_submission(data_dir: Path, split: str, runs: Path, out: Path, cache_dir: Path,
                    ensemble_path: Path | None = None, tta: bool = True, workers: int = 2,
                    device: torch.device | None = None, studies: list[int] | None = None,
                    explain_studies: list[int] | None = None, explain_dir: Path | None = None,
                    per_model: bool = False) -> pd.DataFrame:
    """The whole offline pipeline; returns the submission written to `out` (every expected row, valid).

    studies limits the rows to those studies; explain_studies also writes their reading and PNG sheet;
    per_model also writes each model's own submission (its folds averaged) as submission_{model}.csv beside out.
    """
    started = time.time()
    device = device or pick_device()
    data_dir, runs, cache_dir = Path(data_dir), Path(runs), Path(cache_dir)
    row_ids = expected_rows(data_dir, split)
    if studies is not None:
        row_ids = [r for r, s in zip(row_ids, row_study_ids(row_ids)) if s in {int(x) for x in studies}]
    fitted = ensemble_lib.load(ensemble_path if ensemble_path is not None else ensemble_file(runs))
    prior = prior_frame(row_ids, data_dir, fitted)
    submission = prior
    study_ids = sorted(set(row_study_ids(row_ids).tolist()))
    try:
        prepare(data_dir, cache_dir, split, workers=workers)
        coords = localize(series_table(data_dir, split, study_ids), cache_dir, split, Localizer.from_runs(runs, device=device))
    except Exception as err:  # noqa: BLE001 - the prior still gives a complete submission
        warnings.warn(f"localization failed ({type(err).__name__}: {err}); every row gets the prior", stacklevel=2)
        coords = pd.DataFrame(columns=list(PREDICTED_COORDINATE_COLUMNS))
    frames: dict[str, pd.DataFrame] = {}
    n_model_rows = 0
    try:
        if len(coords):
            # The fitted ensemble names its members; without one, every classifier run takes part.
            names = list(fitted["weights"]) or classifier_runs(runs)
            frames = run_classifiers(coords, runs, names, cache_dir, split, device, tta=tta, workers=workers)
        if frames:
            blended = ensemble_lib.blend(frames, ensemble_lib.member_weights(fitted, list(frames)),
                                         fitted.get("temperature", {}))
            submission = overlay(prior, blended)
            n_model_rows = int(blended["row_id"].isin(set(row_ids)).sum())
    except Exception as err:  # noqa: BLE001 - the prior still gives a complete submission
        warnings.warn(f"classification failed ({type(err).__name__}: {err}); the rows keep the prior", stacklevel=2)
        frames = {}
    result = finalize(submission, row_ids, prior)
    write_csv(result, Path(out))
    if per_model:
        for name, frame in frames.items():
            write_csv(finalize(overlay(prior, frame), row_ids, prior), Path(out).with_name(f"submission_{name}.csv"))
    covered = coords["study_id"].nunique() if len(coords) else 0
    seconds = time.time() - started
    print(f"wrote {out}: {len(result)} rows for {len(study_ids)} studies ({covered} localized, "
          f"{n_model_rows} rows from the models); {seconds / max(len(study_ids), 1):.2f} s per study")
    if explain_studies:
        explain([int(s) for s in explain_studies], coords, result, runs, cache_dir, split,
                Path(explain_dir or Path(out).parent / "explain"), device)
    return result
