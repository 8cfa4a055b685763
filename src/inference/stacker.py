"""A final stage fitted to the competition metric on out-of-fold predictions: per condition group, a linear
map of every member's log-probabilities plus a bias per level, softmaxed; fitted by L-BFGS on a
differentiable twin of the metric (metric_loss: the weighted log loss of each group and the any-severe-spinal
term, as metric.score_parts computes them), with an L2 pull towards the plain geometric mean of the members
(l2 = 10 by default: weaker pulls overfit in nested scores, docs/BENCHMARKS.md).

Its honest score comes from nested folds over the OOF studies (final_stage.nested_scores), and it is written
into ensemble.json only where that beats the plain mean (final_stage.choose); infer.py applies it when every
member it names predicted.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core.constants import (
    COLUMN_TO_CONDITION_LEVEL,
    GROUPS,
    LEVELS,
    TARGETS,
    group_of,
    level_of,
    row_study_ids,
    split_row_id,
)
from ..core.metric import EPS, metric_loss
from .ensemble import common_rows

N_CONTEXT = 4  # study-context features per row (_context)


def _context(logp: np.ndarray, row_ids: list[str]) -> np.ndarray:
    """Per row, from the members' mean log-probabilities (N, 3) of the same study: the mean over the same
    condition's other levels (3 values), and the study's highest spinal severe log-probability (1); zeros
    where there is none. What a study-level model sees of the rest of the study."""
    study = row_study_ids(row_ids)
    condition = [COLUMN_TO_CONDITION_LEVEL[split_row_id(r)[1]][0] for r in row_ids]
    frame = pd.DataFrame(logp, columns=list(TARGETS)).assign(study=study, condition=condition)
    keys = frame.groupby(["study", "condition"])[list(TARGETS)]
    total, count = keys.transform("sum").to_numpy(), keys.transform("count").to_numpy()
    others = np.where(count > 1, (total - logp) / np.maximum(count - 1, 1), 0.0)
    spinal = np.array([group_of(r) == "spinal" for r in row_ids])
    worst = pd.Series(np.where(spinal, logp[:, 2], -np.inf)).groupby(study).transform("max").to_numpy()
    return np.column_stack([others, np.where(np.isfinite(worst), worst, 0.0)])


def _features(frames: dict[str, pd.DataFrame], members: list[str], row_ids: list[str],
              context: bool = False) -> tuple[torch.Tensor, ...]:
    """(log-probabilities (N, 3M), with context the study-context features after them (N, 3M + 4), group
    index, level index) of the rows every member predicted."""
    logp = np.concatenate([np.log(np.clip(frames[m].set_index("row_id").loc[row_ids, list(TARGETS)].to_numpy(float),
                                          EPS, 1.0)) for m in members], axis=1)
    if context:
        logp = np.column_stack([logp, _context(logp.reshape(len(logp), len(members), 3).mean(1), row_ids)])
    group = np.array([GROUPS.index(group_of(r)) for r in row_ids])
    level = np.array([LEVELS.index(level_of(r)) for r in row_ids])
    return torch.from_numpy(logp), torch.from_numpy(group), torch.from_numpy(level)


def _initial(n_members: int, context: bool = False) -> dict[str, torch.Tensor]:
    """The geometric mean of the members: each member's log-probabilities weighted 1/M, no bias, no context."""
    eye = torch.eye(len(TARGETS), dtype=torch.float64)
    w = torch.cat([eye / n_members] * n_members + [torch.zeros(len(TARGETS), N_CONTEXT, dtype=torch.float64)] * context,
                  dim=1)  # (3, 3M [+ 4])
    return {"W": w.repeat(len(GROUPS), 1, 1), "b": torch.zeros(len(GROUPS), len(TARGETS), dtype=torch.float64),
            "level": torch.zeros(len(GROUPS), len(LEVELS), len(TARGETS), dtype=torch.float64)}


def _forward(params: dict[str, torch.Tensor], logp, group, level) -> torch.Tensor:
    z = torch.einsum("nij,nj->ni", params["W"][group], logp) + params["b"][group] + params["level"][group, level]
    return torch.softmax(z, dim=1)


def fit_stacker(frames: dict[str, pd.DataFrame], solution: pd.DataFrame, l2: float = 10.0, steps: int = 100,
                context: bool = False) -> dict:
    """The stacker's parameters fitted on the rows of `solution` that every member predicted, as a JSON-able
    dict {"members", "context", "W", "b", "level", "l2"}; with context each row also sees the rest of its
    study (_context)."""
    members = sorted(frames)
    rows = solution[solution["row_id"].isin(common_rows(frames))]
    if rows.empty:
        raise ValueError("the models' out-of-fold predictions share no scored row")
    ids = rows["row_id"].tolist()
    logp, group, level = _features(frames, members, ids, context)
    label = torch.from_numpy(rows[list(TARGETS)].to_numpy().argmax(1))
    weight = torch.from_numpy(rows["sample_weight"].to_numpy(float))
    _, study = np.unique(row_study_ids(ids), return_inverse=True)
    study = torch.from_numpy(study)
    start = _initial(len(members), context)
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    opt = torch.optim.LBFGS(list(params.values()), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = metric_loss(_forward(params, logp, group, level), label, weight, group, study)
        loss = loss + l2 * sum(((params[k] - start[k]) ** 2).sum() for k in params)
        loss.backward()
        return loss

    opt.step(closure)
    return {"members": members, "context": context, "l2": l2, **{k: v.detach().tolist() for k, v in params.items()}}


def apply_stacker(stacker: dict, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The stacked probabilities (row_id + TARGETS) of the rows every member the stacker names predicted."""
    members = stacker["members"]
    ids = [r for r in common_rows(frames, members).tolist() if group_of(r, strict=False) and _level_or_none(r)]
    logp, group, level = _features(frames, members, ids, bool(stacker.get("context")))
    params = {k: torch.tensor(stacker[k], dtype=torch.float64) for k in ("W", "b", "level")}
    with torch.no_grad():
        probs = _forward(params, logp, group, level).numpy()
    out = pd.DataFrame(probs, columns=list(TARGETS))
    out.insert(0, "row_id", ids)
    return out


def _level_or_none(row_id: str) -> str | None:
    try:
        return level_of(row_id)
    except ValueError:
        return None


def valid_stacker(stacker, members: list[str]) -> str | None:
    """Why a stacker read from ensemble.json cannot be applied to these members, or None when it can."""
    if not isinstance(stacker, dict) or not isinstance(stacker.get("members"), list):
        return "the stacker names no members"
    missing = [m for m in stacker["members"] if m not in members]
    if missing:
        return f"the stacker needs {', '.join(map(str, missing))}, which did not predict"
    k = 3 * len(stacker["members"]) + (N_CONTEXT if stacker.get("context") else 0)
    try:
        shapes = [np.asarray(stacker[n], dtype=float) for n in ("W", "b", "level")]
    except (KeyError, TypeError, ValueError):
        return "the stacker's parameters are not numbers"
    if [s.shape for s in shapes] != [(3, 3, k), (3, 3), (3, 5, 3)] or not all(np.isfinite(s).all() for s in shapes):
        return "the stacker's parameters have the wrong shape or are not finite"
    return None
