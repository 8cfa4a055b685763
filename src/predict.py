"""Offline inference: localize, cut crops, run every fold of every classifier, ensemble, write every row."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import ensemble as ensemble_lib
from .cache import prepare
from .constants import TARGETS, group_of
from .crops import CropSpec, build_crops
from .explain import explain
from .inference import classifier_runs, find_runs, load_model, predict_crops
from .localization import COORD_COLUMNS
from .localize import localize
from .metric import overlay
from .tables import DataError, load_series_descriptions, load_submission, load_train, solution_frame, submission_row_ids


def expected_rows(data_dir: Path, split: str) -> list[str]:
    """sample_submission.csv's rows in its order when it is there, else 25 rows per study of the series file."""
    sample = Path(data_dir) / "sample_submission.csv"
    if split == "test" and sample.is_file():
        return load_submission(sample)["row_id"].tolist()
    series = load_series_descriptions(Path(data_dir) / f"{split}_series_descriptions.csv", unknown="warn")
    return submission_row_ids(series["study_id"].drop_duplicates().tolist())


def prior_frame(row_ids: list[str], data_dir: Path, ensemble: dict) -> pd.DataFrame:
    """The training prior for every row: from ensemble.json, else the data's train.csv, else real-data rates."""
    table = ensemble.get("prior")
    if table is None:
        train_csv = Path(data_dir) / "train.csv"
        solution = None
        if train_csv.is_file():
            try:
                solution = solution_frame(load_train(train_csv))
            except DataError as err:
                warnings.warn(f"{err}; using the real data's class rates as the prior", stacklevel=2)
        table = ensemble_lib.prior_table(solution)
    out = pd.DataFrame(np.array([table[group_of(r)] for r in row_ids]), columns=list(TARGETS))
    out.insert(0, "row_id", row_ids)
    return out


def classifier_predictions(coords: pd.DataFrame, runs: Path, cache_dir: Path, split: str, device: torch.device,
                           names: list[str] | None = None, tta: bool = True, workers: int = 2) -> dict[str, pd.DataFrame]:
    """Per classifier run (every one under runs/ by default): its folds' mean crop probabilities (rows with a crop)."""
    out: dict[str, pd.DataFrame] = {}
    for name in classifier_runs(runs) if names is None else names:
        fold_preds = []
        for run in find_runs(runs, name):
            model, cfg = load_model(run, device)
            crops, index = build_crops(coords, cache_dir, split, CropSpec(**cfg["crop"]), Path(cache_dir) / "crops", workers)
            if len(index):
                fold_preds.append(predict_crops(model, cfg, crops, index, device, hflip_tta=tta).set_index("row_id"))
        if fold_preds:
            mean = sum(fold_preds) / len(fold_preds)
            out[name] = mean.reset_index()
        else:
            warnings.warn(f"no trained {name} under {runs}", stacklevel=2)
    return out


def finalize(submission: pd.DataFrame, row_ids: list[str], data_dir: Path, ensemble: dict) -> pd.DataFrame:
    """Rows in the expected order; any invalid row replaced by the prior; every row summing to 1."""
    values = submission.set_index("row_id").loc[row_ids, list(TARGETS)].to_numpy(dtype=float)
    bad = ~np.isfinite(values).all(1) | (values < 0).any(1) | (values.sum(1) <= 0)
    if bad.any():
        warnings.warn(f"{int(bad.sum())} rows had invalid predictions; they get the prior", stacklevel=2)
        values[bad] = prior_frame([r for r, b in zip(row_ids, bad) if b], data_dir, ensemble)[list(TARGETS)].to_numpy()
    result = pd.DataFrame(values / values.sum(1, keepdims=True), columns=list(TARGETS))
    result.insert(0, "row_id", row_ids)
    return result


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def run(data_dir: Path, split: str, runs: Path, out: Path, cache_dir: Path, ensemble_file: Path | None = None,
        tta: bool = True, workers: int = 2, device: torch.device | None = None, studies: list[int] | None = None,
        explain_studies: list[int] | None = None, explain_dir: Path | None = None, per_model: bool = False) -> pd.DataFrame:
    """The whole offline pipeline; returns the submission written to `out` (every expected row, valid).

    studies limits the rows to those studies; explain_studies also writes their reading and PNG sheet;
    per_model also writes each model's own submission (its folds averaged) as submission_{model}.csv beside out.
    """
    started = time.time()
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_dir, runs, cache_dir = Path(data_dir), Path(runs), Path(cache_dir)
    row_ids = expected_rows(data_dir, split)
    if studies is not None:
        keep = {str(int(s)) for s in studies}
        row_ids = [r for r in row_ids if r.split("_")[0] in keep]
    ensemble = ensemble_lib.load(ensemble_file if ensemble_file is not None else runs / "ensemble.json")
    prior = prior_frame(row_ids, data_dir, ensemble)
    submission = prior
    studies = sorted({int(r.split("_")[0]) for r in row_ids})
    try:
        prepare(data_dir, cache_dir, split, workers=workers)
        coords = localize(data_dir, split, runs, cache_dir, studies, workers=workers, device=device)
    except Exception as err:  # noqa: BLE001 - the prior still gives a complete submission
        warnings.warn(f"localization failed ({type(err).__name__}: {err}); every row gets the prior", stacklevel=2)
        coords = pd.DataFrame(columns=COORD_COLUMNS)
    frames: dict[str, pd.DataFrame] = {}
    n_model_rows = 0
    try:
        if len(coords):
            # The fitted ensemble names its members; without one, every classifier run takes part.
            names = list(ensemble["weights"]) or None
            frames = classifier_predictions(coords, runs, cache_dir, split, device, names, tta=tta, workers=workers)
        if frames:
            weights = {n: ensemble["weights"].get(n, 1.0) for n in frames} if ensemble["weights"] else {n: 1.0 for n in frames}
            blended = ensemble_lib.blend(frames, weights, ensemble.get("temperature", {}))
            submission = overlay(prior, blended)
            n_model_rows = int(blended["row_id"].isin(set(row_ids)).sum())
    except Exception as err:  # noqa: BLE001 - the prior still gives a complete submission
        warnings.warn(f"classification failed ({type(err).__name__}: {err}); the rows keep the prior", stacklevel=2)
        frames = {}
    result = finalize(submission, row_ids, data_dir, ensemble)
    write_atomic(result, Path(out))
    if per_model:
        for name, frame in frames.items():
            own = overlay(prior, frame)
            write_atomic(finalize(own, row_ids, data_dir, ensemble), Path(out).with_name(f"submission_{name}.csv"))
    covered = len(set(coords["study_id"])) if len(coords) else 0
    seconds = time.time() - started
    print(f"wrote {out}: {len(result)} rows for {len(studies)} studies ({covered} localized, "
          f"{n_model_rows} rows from the models); "
          f"{seconds / max(len(studies), 1):.2f} s per study")
    if explain_studies:
        explain([int(s) for s in explain_studies], coords, result, runs, cache_dir, split,
                Path(explain_dir or Path(out).parent / "explain"), device)
    return result
