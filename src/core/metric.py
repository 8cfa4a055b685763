"""The competition metric: sample-weighted log loss per condition group plus an any-severe-spinal term; the
labels in its solution format; constant priors; and its differentiable twins on torch tensors (metric_loss,
any_severe_term) for losses and fitted final stages. torch is imported by the twins alone, so scoring a CSV
does not load it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import xlogy

from .constants import (
    ANY_SEVERE_PART,
    ANY_SEVERE_SCALAR,
    GROUPS,
    LABEL_COLUMNS,
    REAL_CLASS_FREQUENCIES,
    SAMPLE_WEIGHTS,
    TARGETS,
    group_of,
    row_study_ids,
)
from .faults import InputError

if TYPE_CHECKING:
    import torch


class MetricError(InputError, ValueError):
    """The submission cannot be scored (non-numeric, non-finite, negative or missing rows)."""


def _check_predictions(frame: pd.DataFrame, what: str) -> np.ndarray:
    missing = [c for c in TARGETS if c not in frame.columns]
    if missing:
        raise MetricError(f"{what} lacks column(s) {missing}")
    for col in TARGETS:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise MetricError(f"{what}: column '{col}' is not numeric")
    values = frame[list(TARGETS)].to_numpy(dtype=float)
    for problem, bad_rows in (("non-finite", ~np.isfinite(values).all(1)), ("negative", (values < 0).any(1))):
        if bad_rows.any():
            bad = frame.iloc[int(np.flatnonzero(bad_rows)[0])]
            raise MetricError(f"{what}: {problem} value in row {bad.get('row_id', bad.name)!r}")
    return values


def log_loss(label: np.ndarray, prob: np.ndarray, sample_weight: np.ndarray) -> float:
    """sklearn.metrics.log_loss(label, prob, sample_weight=..., labels=range(k)) to the last bit (the same clip
    to [eps, 1 - eps], the same weighted mean) for integer labels and rows of k probabilities (a column of
    positive-class probabilities for k = 2), without its input checks: the final stage scores thousands of
    blends, and the checks were 90% of each score."""
    prob = np.asarray(prob, dtype=float)
    if prob.ndim == 1:
        prob = np.stack([1 - prob, prob], 1)
    eps = np.finfo(prob.dtype).eps
    picked = np.clip(prob[np.arange(len(prob)), np.asarray(label, dtype=np.int64)], eps, 1 - eps)
    weight = np.asarray(sample_weight, dtype=float)
    return float(np.sum(-xlogy(1.0, picked) * weight) / np.sum(weight))  # scipy's log, as sklearn's


def score_parts(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    row_id_column_name: str = "row_id",
    any_severe_scalar: float = ANY_SEVERE_SCALAR,
) -> dict[str, float]:
    """The competition score and its four parts: spinal, foraminal, subarticular, any_severe_spinal.

    Submission rows are matched to solution rows by row_id; extra submission rows are ignored, a solution
    row without a prediction raises. Probabilities are renormalised per row and clipped as sklearn does.
    """
    truth = _check_predictions(solution, "solution")
    if (truth < 0).any():
        raise MetricError("solution: labels must be at least zero")
    if "sample_weight" not in solution.columns:
        raise MetricError("solution lacks column 'sample_weight'")
    rows = _ScoredRows(solution[row_id_column_name].astype(str), submission, row_id_column_name)
    return rows.parts(truth.argmax(1), solution["sample_weight"].to_numpy(dtype=float), any_severe_scalar)


class _ScoredRows:
    """A submission's predictions aligned to the solution's rows, each group's rows and the spinal rows' studies:
    what the metric needs besides the labels and their weights, worked out once for any number of label sets."""

    def __init__(self, ids: pd.Series, submission: pd.DataFrame, row_id_column_name: str = "row_id"):
        _check_predictions(submission, "submission")
        sub = submission.drop_duplicates(row_id_column_name).set_index(row_id_column_name)
        missing = ~ids.isin(sub.index)
        if missing.any():
            raise MetricError(f"submission lacks {int(missing.sum())} scored row(s), e.g. {ids[missing].iloc[0]!r}")
        self.pred = sub.loc[ids, list(TARGETS)].to_numpy(dtype=float)
        # Renormalise rows as older sklearn's log_loss did (newer releases refuse rows not summing to 1);
        # an all-zero row becomes uniform. The any-severe term below reads the raw severe column, as upstream.
        totals = self.pred.sum(1, keepdims=True)
        self.norm = np.where(totals > 0, self.pred / np.where(totals > 0, totals, 1.0), 1.0 / len(TARGETS))
        group = ids.map(group_of).to_numpy()
        self.masks = {g: group == g for g in GROUPS}
        for g, m in self.masks.items():
            if not m.any():
                raise MetricError(f"solution has no '{g}' rows")
        # Each spinal row's study, as an index 0..n-1: the any-severe term takes a maximum per study.
        self.spinal_study = np.unique(row_study_ids(ids)[self.masks["spinal"]], return_inverse=True)[1]

    def parts(self, label: np.ndarray, weight: np.ndarray, any_severe_scalar: float = ANY_SEVERE_SCALAR) -> dict[str, float]:
        """The score and its parts for these labels (class indices) and sample weights."""
        parts = {g: log_loss(label[m], self.norm[m], weight[m]) for g, m in self.masks.items()}
        # Per study, the maximum of each spinal column (as the official metric's groupby().max()): the raw severe
        # column, the severe label and the weight.
        m, which = self.masks["spinal"], self.spinal_study
        per_study = np.full((which.max() + 1, 3), -np.inf)
        np.maximum.at(per_study, which, np.stack([self.pred[m, 2], (label[m] == 2).astype(float), weight[m]], 1))
        parts[ANY_SEVERE_PART] = log_loss(per_study[:, 1].astype(np.int64), per_study[:, 0].clip(0, 1), per_study[:, 2])
        weights = [1.0, 1.0, 1.0, any_severe_scalar]
        values = [parts[g] for g in GROUPS] + [parts[ANY_SEVERE_PART]]
        parts["score"] = float(np.average(values, weights=weights))
        return parts


def expected_score_parts(label_probs: pd.DataFrame, submission: pd.DataFrame, draws: int = 200,
                         seed: int = 0) -> dict[str, float]:
    """score_parts averaged over `draws` label sets drawn from label_probs (row_id and, per row, the probability
    of each written label in TARGETS' columns; a synthetic set's p(label | latent severity)). On a set whose
    labels are noisy reads of a known truth this is the score with the readers' noise averaged out: two models
    that read the images alike score alike, where the one drawn label set can move them apart (a few severe
    canal levels a reader called severe below the threshold weigh 4 each)."""
    probs = _check_predictions(label_probs, "label probabilities")
    cumulative = np.cumsum(probs / probs.sum(1, keepdims=True), 1)
    rng = np.random.default_rng(seed)
    rows = _ScoredRows(label_probs["row_id"].astype(str), submission)
    class_weights = np.asarray(SAMPLE_WEIGHTS, dtype=float)
    totals: dict[str, float] = {}
    for _ in range(draws):
        label = (rng.random((len(probs), 1)) > cumulative[:, :-1]).sum(1)
        for part, value in rows.parts(label, class_weights[label]).items():
            totals[part] = totals.get(part, 0.0) + value / draws
    return totals


def score(solution: pd.DataFrame, submission: pd.DataFrame, *args, **kwargs) -> float:
    """The competition score (lower is better), with Kaggle's signature; see score_parts for the pieces."""
    return score_parts(solution, submission, *args, **kwargs)["score"]


def overlay(base: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """base (row_id + TARGETS, e.g. the prior) with the rows that predictions also has replaced by them;
    prediction rows base lacks (e.g. unlabelled rows when base is a solution's prior) are ignored."""
    out = base.set_index("row_id")
    predictions = predictions[predictions["row_id"].isin(out.index)]
    out.loc[predictions["row_id"].to_numpy(), list(TARGETS)] = predictions[list(TARGETS)].to_numpy()
    return out.reset_index()


def prior_table(solution: pd.DataFrame | None = None, weighted: bool = True) -> dict[str, list[float]]:
    """A constant prediction per condition group: the class frequencies of a solution's labels (the real
    train.csv's rates without one), times the metric's class weights and renormalised when weighted.

    The weighted constant minimises the weighted log loss: the floor any model must beat.
    """
    labelled = solution is not None and len(solution) > 0
    groups = solution["row_id"].astype(str).map(group_of).to_numpy() if labelled else None
    table = {}
    for g in GROUPS:
        if labelled:
            freq = solution.loc[groups == g, list(TARGETS)].to_numpy(dtype=float).mean(0)
        else:
            freq = np.asarray(REAL_CLASS_FREQUENCIES[g], dtype=float)
        if weighted:
            freq = freq * np.asarray(SAMPLE_WEIGHTS)
        table[g] = (freq / freq.sum()).tolist()
    return table


def prior_rows(table: dict[str, list[float]], row_ids: list[str]) -> pd.DataFrame:
    """A prior table spread over submission rows (row_id + TARGETS); a row without a known condition group (a
    malformed sample_submission row that must still be written) gets 1/3 each."""
    uniform = [1.0 / len(TARGETS)] * len(TARGETS)
    groups = [group_of(str(r), strict=False) for r in row_ids]
    out = pd.DataFrame(np.array([table[g] if g else uniform for g in groups]).reshape(-1, len(TARGETS)),
                       columns=list(TARGETS))
    out.insert(0, "row_id", list(row_ids))
    return out


def prior_submission(train_solution: pd.DataFrame, row_ids: list[str], weighted: bool = True) -> pd.DataFrame:
    """The prior fitted on training labels (prior_table) for the given rows."""
    return prior_rows(prior_table(train_solution, weighted), row_ids)


def row_folds(solution: pd.DataFrame, folds: pd.DataFrame) -> pd.Series:
    """The fold of each solution row's study (NaN where the folds file has none), aligned to the rows."""
    return pd.Series(row_study_ids(solution["row_id"]), index=solution.index).map(
        dict(zip(folds["study_id"], folds["fold"])))


def fold_prior(train: pd.DataFrame, folds: pd.DataFrame, solution: pd.DataFrame) -> pd.DataFrame:
    """Each fold's rows get the prior fitted on the other folds (what a model of that fold could know)."""
    study = row_folds(solution, folds)
    parts = []
    for f in sorted(study.dropna().unique()):
        ids = solution.loc[study == f, "row_id"].tolist()
        parts.append(prior_submission(solution_frame(train, folds.loc[folds["fold"] != f, "study_id"]), ids))
    return pd.concat(parts, ignore_index=True)


def labels_long(train: pd.DataFrame) -> pd.DataFrame:
    """Wide train labels -> one row per (study, column) with row_id and the class index; NaN rows dropped."""
    long = train.melt(id_vars="study_id", value_vars=list(LABEL_COLUMNS), var_name="column", value_name="label")
    long = long.dropna(subset=["label"])
    long["label"] = long["label"].astype(int)
    long["row_id"] = long["study_id"].astype(str) + "_" + long["column"]
    return long.reset_index(drop=True)


def solution_frame(train: pd.DataFrame, study_ids: list[int] | np.ndarray | None = None) -> pd.DataFrame:
    """Labels in the metric's solution format (row_id, one-hot targets, sample_weight), NaN labels left out.

    With study_ids (e.g. one fold's validation studies) only those studies are kept, so out-of-fold
    predictions can be scored.
    """
    if study_ids is not None:
        train = train[train["study_id"].isin(set(int(s) for s in study_ids))]
    long = labels_long(train)
    onehot = np.eye(len(TARGETS))[long["label"].to_numpy()]
    sol = pd.DataFrame(onehot, columns=list(TARGETS))
    sol.insert(0, "row_id", long["row_id"].to_numpy())
    sol["sample_weight"] = np.asarray(SAMPLE_WEIGHTS)[long["label"].to_numpy()]
    return sol.sort_values("row_id").reset_index(drop=True)


EPS = 1e-15  # sklearn's log_loss clipping


def metric_loss(probs: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, group: torch.Tensor,
                study: torch.Tensor) -> torch.Tensor:
    """The competition score of probabilities (N, 3) as a differentiable tensor: per group the sample-weighted
    log loss, and the any-severe-spinal term over each study's spinal rows (the max of its severe column),
    averaged with weights 1, 1, 1 and ANY_SEVERE_SCALAR. group: 0..2 in GROUPS order; study: 0..S-1."""
    import torch

    p = probs.clamp(EPS, 1 - EPS)
    nll = -torch.log(p.gather(1, label[:, None]).squeeze(1))
    parts = [(nll[group == g] * weight[group == g]).sum() / weight[group == g].sum() for g in range(len(GROUPS))]
    spinal = group == GROUPS.index("spinal")
    parts.append(any_severe_term(p[spinal, 2], label[spinal] == 2, weight[spinal], study[spinal]))
    weights = torch.tensor([1.0, 1.0, 1.0, ANY_SEVERE_SCALAR], dtype=p.dtype)
    return (torch.stack(parts) * weights).sum() / weights.sum()


def any_severe_term(severe: torch.Tensor, is_severe: torch.Tensor, weight: torch.Tensor, study: torch.Tensor,
                    eps: float = EPS) -> torch.Tensor:
    """The metric's any-severe-spinal term from spinal rows, differentiable: per study (`study`: its index per
    row) the binary log loss of its highest p(severe) against whether any of its rows is severe, weighted by
    the highest sample weight of its rows; 0 without rows."""
    import torch

    if not len(study):
        return severe.sum() * 0.0
    n = int(study.max()) + 1
    dtype = severe.dtype
    worst = torch.full((n,), -1.0, dtype=dtype, device=severe.device).scatter_reduce(0, study, severe, "amax")
    label = torch.zeros(n, dtype=dtype, device=severe.device).scatter_reduce(0, study, is_severe.to(dtype), "amax")
    w = torch.zeros(n, dtype=dtype, device=severe.device).scatter_reduce(0, study, weight.to(dtype), "amax")
    has = worst >= 0
    q = worst[has].clamp(eps, 1 - eps)
    bce = -(label[has] * torch.log(q) + (1 - label[has]) * torch.log(1 - q))
    return (bce * w[has]).sum() / w[has].sum().clamp_min(1e-12)
