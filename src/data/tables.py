"""Loaders for the competition CSVs, validated against the real schemas.

Every loader raises DataError naming the file, the line and the column of the first bad cell,
so a user with a broken download sees what to fix instead of a KeyError deep in training.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.constants import (
    COLUMN_TO_CONDITION_LEVEL,
    CONDITIONS,
    COORDINATE_COLUMNS,
    LABEL_COLUMNS,
    LEVELS,
    ROW_ID_PATTERN,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
    SEVERITY_TO_INDEX,
    SLICE_ALTERNATIVE_COLUMNS,
    TARGETS,
    row_id,
)
from ..core.faults import InputError


class DataError(InputError, ValueError):
    """A competition file is missing, malformed or holds a value outside the schema."""


def _read(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from err


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...] | list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")


def _fail(path: Path, index: int, column: str, message: str) -> DataError:
    # index is the 0-based data row; line numbers count the header as line 1.
    return DataError(f"{path}: line {index + 2}, column '{column}': {message}")


def _to_int(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    text = df[column].str.strip()
    ok = text.str.fullmatch(r"[+-]?\d+")
    if not ok.all():
        i = int(np.flatnonzero(~ok.to_numpy())[0])
        raise _fail(path, i, column, f"expected an integer, got {df[column].iloc[i]!r}")
    return text.astype(np.int64)


def _to_float(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(df[column].str.strip(), errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype=float))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(path, i, column, f"expected a finite number, got {df[column].iloc[i]!r}")
    return values.astype(float)


def _check_allowed(df: pd.DataFrame, column: str, allowed: tuple[str, ...], path: Path, what: str) -> None:
    bad = ~df[column].isin(allowed)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise _fail(path, i, column, f"unknown {what} {df[column].iloc[i]!r}; expected one of {list(allowed)}")


def _check_unique(df: pd.DataFrame, keys: list[str], path: Path) -> None:
    dup = df.duplicated(keys)
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise _fail(path, i, keys[-1], f"duplicate key {tuple(df[keys].iloc[i])}")


def load_train(path: str | Path) -> pd.DataFrame:
    """train.csv -> study_id plus the 25 label columns as float class indices (0, 1, 2; NaN when unlabelled)."""
    path = Path(path)
    raw = _read(path)
    _require_columns(raw, ["study_id", *LABEL_COLUMNS], path)
    if raw.empty:
        raise DataError(f"{path}: no studies (only a header)")
    out = pd.DataFrame({"study_id": _to_int(raw, "study_id", path)})
    for col in LABEL_COLUMNS:
        _check_allowed(raw, col, (*SEVERITIES, ""), path, "label")
        out[col] = raw[col].map(SEVERITY_TO_INDEX).astype(float)
    _check_unique(out, ["study_id"], path)
    return out


def load_series_descriptions(path: str | Path, strict: bool = True,
                             problems: list[tuple[int | None, bool, str]] | None = None) -> pd.DataFrame:
    """{split}_series_descriptions.csv -> study_id, series_id, series_description.

    strict (training data must be clean): the first bad line raises DataError. Not strict (inference keeps
    going): a line with a non-integer id, an unknown description or a repeated (study, series) is dropped,
    each named with its line and study in one warning and appended to `problems` as (study_id or None,
    whether a series was lost, text); a repeated line loses nothing.
    """
    path = Path(path)
    raw = _read(path)
    _require_columns(raw, ["study_id", "series_id", "series_description"], path)
    raw["series_description"] = raw["series_description"].str.strip()
    if strict:
        out = pd.DataFrame({"study_id": _to_int(raw, "study_id", path), "series_id": _to_int(raw, "series_id", path),
                            "series_description": raw["series_description"]})
        _check_allowed(out, "series_description", SERIES_DESCRIPTIONS, path, "series description")
        _check_unique(out, ["study_id", "series_id"], path)
        return out
    ints = {c: raw[c].str.strip().str.fullmatch(r"[+-]?\d+") for c in ("study_id", "series_id")}
    bad_int = ~(ints["study_id"] & ints["series_id"])
    study = pd.to_numeric(raw["study_id"].where(~bad_int), errors="coerce")
    series = pd.to_numeric(raw["series_id"].where(~bad_int), errors="coerce")
    unknown = ~bad_int & ~raw["series_description"].isin(SERIES_DESCRIPTIONS)
    repeated = ~bad_int & ~unknown & pd.DataFrame({"s": study, "r": series}).where(~unknown).duplicated()
    notes: list[tuple[int | None, bool, str]] = []
    for i in np.flatnonzero((bad_int | unknown | repeated).to_numpy()):
        if bad_int.iloc[i]:
            why = f"non-integer id ({raw['study_id'].iloc[i]!r}, {raw['series_id'].iloc[i]!r})"
        elif unknown.iloc[i]:
            why = f"unknown series description {raw['series_description'].iloc[i]!r}"
        else:
            why = f"repeats series {int(series.iloc[i])}"
        sid = None if bad_int.iloc[i] else int(study.iloc[i])
        notes.append((sid, not repeated.iloc[i],
                      f"line {i + 2}" + (f", study {sid}" if sid is not None else "") + f": {why}; line dropped"))
    if notes:
        warnings.warn(f"{path}: " + "; ".join(text for _, _, text in notes), stacklevel=2)
        if problems is not None:
            problems.extend((sid, lost, f"{path}: {text}") for sid, lost, text in notes)
    keep = ~(bad_int | unknown | repeated).to_numpy()
    return pd.DataFrame({"study_id": study[keep].astype(np.int64), "series_id": series[keep].astype(np.int64),
                         "series_description": raw["series_description"][keep]}).reset_index(drop=True)


def load_coordinates(path: str | Path) -> pd.DataFrame:
    """train_label_coordinates.csv (or predicted coordinates in its format), validated."""
    path = Path(path)
    raw = _read(path)
    _require_columns(raw, list(COORDINATE_COLUMNS), path)
    _check_allowed(raw, "condition", CONDITIONS, path, "condition")
    _check_allowed(raw, "level", LEVELS, path, "level")
    out = pd.DataFrame(
        {
            "study_id": _to_int(raw, "study_id", path),
            "series_id": _to_int(raw, "series_id", path),
            "instance_number": _to_int(raw, "instance_number", path),
            "condition": raw["condition"],
            "level": raw["level"],
            "x": _to_float(raw, "x", path),
            "y": _to_float(raw, "y", path),
        }
    )
    if "confidence" in raw:  # a localizer's (PREDICTED_COORDINATE_COLUMNS)
        out["confidence"] = _to_float(raw, "confidence", path)
    if set(SLICE_ALTERNATIVE_COLUMNS) & set(raw.columns):  # and its points' neighbouring slices, where named
        _require_columns(raw, SLICE_ALTERNATIVE_COLUMNS, path)
        weight = _to_float(raw, "alt_weight", path)
        if not weight.between(0, 1).all():
            i = int(np.flatnonzero(~weight.between(0, 1).to_numpy())[0])
            raise _fail(path, i, "alt_weight", f"expected a weight in [0, 1], got {raw['alt_weight'].iloc[i]!r}")
        text = raw["alt_instance_number"].str.strip()
        bad = ((text != "") & ~text.str.fullmatch(r"[+-]?\d+")).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _fail(path, i, "alt_instance_number", f"expected an integer or nothing, got {text.iloc[i]!r}")
        out["alt_instance_number"] = pd.to_numeric(text.where(text != "")).astype(float)  # NaN: no neighbour named
        out["alt_weight"] = weight
    for extra in raw.columns.difference(out.columns):
        out[extra] = raw[extra]
    return out


def bad_row_ids(row_ids: pd.Series) -> np.ndarray:
    """Positions of row ids not of the form '{study_id}_{label column}' (e.g. '123_spinal_canal_stenosis_l1_l2')."""
    return np.flatnonzero(~row_ids.astype(str).str.fullmatch(ROW_ID_PATTERN).to_numpy())


def _check_row_ids(raw: pd.DataFrame, path: Path) -> None:
    bad = bad_row_ids(raw["row_id"])
    if len(bad):
        raise _fail(path, int(bad[0]), "row_id", f"{raw['row_id'].iloc[bad[0]]!r} is not a study id and a label column "
                                                 "(e.g. '123_spinal_canal_stenosis_l1_l2')")


def load_submission(path: str | Path, strict: bool = True) -> pd.DataFrame:
    """A submission (or sample_submission / oracle) file: row_id plus the three probabilities.

    strict checks every row id against the competition's format; sample_submission at inference time is
    read with strict=False, since every one of its rows must be written whatever it holds.
    """
    path = Path(path)
    raw = _read(path)
    _require_columns(raw, ["row_id", *TARGETS], path)
    if strict:
        _check_row_ids(raw, path)
    out = pd.DataFrame({"row_id": raw["row_id"]})
    for col in TARGETS:
        out[col] = _to_float(raw, col, path)
    _check_unique(out, ["row_id"], path)
    return out


def load_row_ids(path: str | Path, problems: list[str] | None = None) -> list[str]:
    """A sample_submission's row ids in order, read leniently (inference must write each of them): only the
    row_id column is read, and a repeated row id is kept once, its line named in `problems`."""
    path = Path(path)
    raw = _read(path)
    _require_columns(raw, ["row_id"], path)
    ids = raw["row_id"].astype(str)
    repeated = ids.duplicated()
    for i in np.flatnonzero(repeated.to_numpy()):
        if problems is not None:
            problems.append(f"{path}: line {i + 2}: row {ids.iloc[i]!r} repeats an earlier line; written once")
    return ids[~repeated].tolist()


def load_solution(path: str | Path) -> pd.DataFrame:
    """A solution file: row_id, one-hot normal_mild/moderate/severe and sample_weight."""
    path = Path(path)
    raw = _read(path)
    _require_columns(raw, ["row_id", *TARGETS, "sample_weight"], path)
    _check_row_ids(raw, path)
    out = pd.DataFrame({"row_id": raw["row_id"]})
    for col in [*TARGETS, "sample_weight"]:
        out[col] = _to_float(raw, col, path)
    _check_unique(out, ["row_id"], path)
    return out


def load_label_probabilities(path: str | Path) -> pd.DataFrame:
    """A synthetic split's latent table ({split}_latent.csv: p_normal_mild, p_moderate, p_severe per row, the
    probability of each written label given the latent severity) -> row_id plus TARGETS' columns."""
    path = Path(path)
    raw = _read(path)
    columns = [f"p_{t}" for t in TARGETS]
    _require_columns(raw, ["row_id", *columns], path)
    _check_row_ids(raw, path)
    out = pd.DataFrame({"row_id": raw["row_id"]})
    for col, target in zip(columns, TARGETS):
        out[target] = _to_float(raw, col, path)
    _check_unique(out, ["row_id"], path)
    return out


def submission_row_ids(study_ids: list[int] | np.ndarray) -> list[str]:
    """All 25 row_ids of each study, in sample_submission's order (row_id sorted within a study)."""
    out = []
    for sid in study_ids:
        out.extend(sorted(row_id(sid, c, lv) for c, lv in COLUMN_TO_CONDITION_LEVEL.values()))
    return out
