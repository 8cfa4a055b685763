"""Patient-level stratified folds: MultilabelStratifiedKFold over the one-hot 25 x 3 labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from ..core.atomic import write_csv
from ..core.constants import LABEL_COLUMNS, SEVERITIES
from ..core.metric import solution_frame
from .tables import DataError, load_train


def onehot_labels(train: pd.DataFrame) -> np.ndarray:
    """(n_studies, 75) indicator matrix; a NaN label has no class."""
    values = train[list(LABEL_COLUMNS)].to_numpy(dtype=float)
    out = np.zeros((len(train), len(LABEL_COLUMNS), len(SEVERITIES)), dtype=np.int8)
    for k in range(len(SEVERITIES)):
        out[:, :, k] = values == k
    return out.reshape(len(train), -1)


def max_share_deviation(y: np.ndarray, folds: np.ndarray) -> float:
    """Largest gap, over folds and (column, class), between a fold's share and the overall share."""
    overall = y.mean(0)
    return float(max(np.abs(y[folds == k].mean(0) - overall).max() for k in np.unique(folds)))


def balance_folds(
    y: np.ndarray, folds: np.ndarray, tolerance: float = 0.006, max_swaps: int = 2000, sample: int = 64, seed: int = 0
) -> np.ndarray:
    """Swap studies between folds until every fold's (column, class) share is within `tolerance` of the whole.

    Iterative stratification is greedy and leaves gaps of 2-3 percentage points on common classes; each
    step here swaps the pair of studies (between the worst fold and another, from a random sample of
    each) that most lowers the sum of fourth powers of the share gaps. Fold sizes never change.
    """
    rng = np.random.default_rng(seed)
    folds = folds.copy()
    y = y.astype(np.float32)
    k_folds = int(folds.max()) + 1
    overall = y.mean(0)
    sizes = np.bincount(folds, minlength=k_folds).astype(np.float32)
    counts = np.stack([y[folds == k].sum(0) for k in range(k_folds)])
    for _ in range(max_swaps):
        gap = counts / sizes[:, None] - overall
        worst = np.abs(gap).max(1)
        a = int(np.argmax(worst))
        if worst[a] <= tolerance:
            break
        best_gain, best = 0.0, None
        in_a = rng.permutation(np.flatnonzero(folds == a))[:sample]
        for b in range(k_folds):
            if b == a:
                continue
            in_b = rng.permutation(np.flatnonzero(folds == b))[:sample]
            delta = y[in_b][None, :, :] - y[in_a][:, None, :]  # a gives i, receives j
            new_a = gap[a] + delta / sizes[a]
            new_b = gap[b] - delta / sizes[b]
            gain = (gap[a] ** 4).sum() + (gap[b] ** 4).sum() - (new_a**4).sum(-1) - (new_b**4).sum(-1)
            i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
            if gain[i, j] > best_gain:
                best_gain, best = float(gain[i, j]), (in_a[i], in_b[j], b)
        if best is None:
            break
        i, j, b = best
        counts[a] += y[j] - y[i]
        counts[b] -= y[j] - y[i]
        folds[i], folds[j] = b, a
    return folds


DEFAULT_FOLDS = 5  # make_folds' default, and so what ensure_folds writes when there is no folds file


def make_folds(
    train: pd.DataFrame, n_folds: int = DEFAULT_FOLDS, seed: int = 42, tolerance: float | None = 0.006
) -> pd.DataFrame:
    """One row per study with its fold; a study (= patient in this competition) is in exactly one fold.

    MultilabelStratifiedKFold assigns the folds; balance_folds then evens out what it left (tolerance=None
    keeps iterative stratification's folds as they are).
    """
    if train["study_id"].duplicated().any():
        raise ValueError("train has duplicate study_id rows; one row per study is required")
    if len(train) < n_folds:
        raise ValueError(f"{len(train)} studies cannot make {n_folds} folds")
    y = onehot_labels(train)
    folds = np.full(len(train), -1, dtype=int)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(train)), y)):
        folds[val] = k
    if tolerance is not None:
        folds = balance_folds(y, folds, tolerance=tolerance, seed=seed)
    return pd.DataFrame({"study_id": train["study_id"].to_numpy(), "fold": folds})


def fold_class_counts(train: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Count of each class per fold over all 25 label columns (what make_folds.py prints)."""
    merged = train.merge(folds, on="study_id")
    values = merged[list(LABEL_COLUMNS)]
    rows = {}
    for k, part in values.groupby(merged["fold"]):
        flat = part.to_numpy(dtype=float).ravel()
        rows[k] = {"studies": len(part), **{s: int((flat == i).sum()) for i, s in enumerate(SEVERITIES)}}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("fold")


def load_folds(path) -> pd.DataFrame:
    """folds.csv -> study_id, fold (ints)."""
    folds = pd.read_csv(path)
    missing = {"study_id", "fold"} - set(folds.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    try:
        return folds.astype({"study_id": np.int64, "fold": int})
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: study_id and fold must be whole numbers ({err})") from None


def fold_solution(train: pd.DataFrame, folds: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Solution frame (metric format) of one fold's validation studies, to score that fold's oof.csv."""
    ids = folds.loc[folds["fold"] == fold, "study_id"].to_numpy()
    if len(ids) == 0:
        raise ValueError(f"fold {fold} has no studies (folds present: {sorted(folds['fold'].unique())})")
    return solution_frame(train, ids)


def check_fold(train_csv: Path, folds_file: Path, fold: int) -> None:
    """DataError in one line before anything is built: the folds file (when it exists) gives a fold to every
    study of train_csv, and `fold` is one of its folds (of the DEFAULT_FOLDS that ensure_folds writes, else)."""
    folds_file = Path(folds_file)
    if not folds_file.is_file():
        if not 0 <= fold < DEFAULT_FOLDS:
            raise DataError(f"--fold {fold}: no folds file at {folds_file} yet; the one written there holds folds "
                            f"0-{DEFAULT_FOLDS - 1}")
        return
    try:
        folds = load_folds(folds_file)
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{folds_file}: {str(err).removeprefix(f'{folds_file}: ')}") from None
    _check_every_study_has_a_fold(folds_file, folds, load_train(train_csv), train_csv)
    present = sorted(int(f) for f in folds["fold"].unique())
    if fold not in present:
        raise DataError(f"--fold {fold}: {folds_file} holds folds {', '.join(map(str, present))}")


def ensure_folds(path: str | Path, train: pd.DataFrame) -> pd.DataFrame:
    """The folds file at path; written with the default settings when it does not exist yet."""
    path = Path(path)
    if not path.is_file():
        write_csv(make_folds(train), path)
        print(f"no folds file at {path}: wrote one ({DEFAULT_FOLDS} folds, seed 42)")
    folds = load_folds(path)
    _check_every_study_has_a_fold(path, folds, train)
    return folds


def _check_every_study_has_a_fold(folds_file: Path, folds: pd.DataFrame, train: pd.DataFrame,
                                  train_csv: Path | None = None) -> None:
    """DataError naming the folds file when a study of train.csv has no fold in it."""
    unknown = set(train["study_id"]) - set(folds["study_id"])
    if unknown:
        redo = f"; write the folds again: python make_folds.py --data-dir {Path(train_csv).parent} --out {folds_file}" \
            if train_csv is not None else ""
        raise DataError(f"{folds_file}: {len(unknown)} studies of {train_csv or 'train.csv'} have no fold "
                        f"(e.g. {sorted(unknown)[0]}){redo}")
