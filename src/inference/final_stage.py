"""The final stage, validated before it is used: how the members' predictions become one.

Stages: 'mean' (equal weights, temperature 1: nothing fitted), 'weights' (a weight per member and a temperature
per condition group, fitted to the metric with a pull toward the mean, ensemble.fit_ensemble), 'stacker' and
'stacker_context' (stacker.py). `choose` scores the asked stage by nested folds over the studies (fitted on
the other parts, applied to each held-out part, the held-out predictions scored together) beside the plain
mean on the same rows, and keeps the fitted stage only where it beats the mean by more than the luck of
which studies were scored (the gain's 10th percentile over the studies drawn again is above 0); else the
mean, and why. A fitted stage that cannot be trusted on a few dozen studies is thus never shipped.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import ENSEMBLE_DEFAULTS, ENSEMBLE_STAGES
from ..core.constants import TARGETS, row_study_ids
from ..core.metric import score
from ..core.run_folders import OOF, OOF_PREDICTED, trained_folds
from .ensemble import blend, collect_oof, common_rows, fit_ensemble, member_weights
from .stacker import apply_stacker, fit_stacker

NESTED_FOLDS = ENSEMBLE_DEFAULTS["nested_folds"]
SHRINK = ENSEMBLE_DEFAULTS["shrink"]
DRAWS = 200  # studies drawn again (with replacement) to tell a nested gain from luck


def stage_predictions(runs: Path, names: list[str] | None = None) -> tuple[str, dict[str, pd.DataFrame]]:
    """What a final stage is fitted on, and which file it is: every member's oof_predicted.csv (crops at its
    fold's predicted points, as test time sees them) where each fold with an oof.csv has one, else oof.csv."""
    labelled = collect_oof(runs, names)
    complete = all((fold / OOF_PREDICTED).is_file() for name in labelled for fold in trained_folds(runs, name)
                   if (fold / OOF).is_file())
    return (OOF_PREDICTED, collect_oof(runs, list(labelled), OOF_PREDICTED)) if labelled and complete else (OOF, labelled)


def fit_stage(stage: str, frames: dict[str, pd.DataFrame], solution: pd.DataFrame, shrink: float = SHRINK) -> dict:
    """The ensemble.json entries of one stage fitted on the rows of `solution` every member predicted."""
    if stage not in ENSEMBLE_STAGES:
        raise ValueError(f"unknown final stage {stage!r}; known: {', '.join(ENSEMBLE_STAGES)}")
    mean = {"weights": {n: 1.0 / len(frames) for n in sorted(frames)}, "temperature": {}}
    if stage == "mean":
        return mean
    if stage == "weights":
        return fit_ensemble(frames, solution, shrink)
    return {**mean, "stacker": fit_stacker(frames, solution, context=stage == "stacker_context")}


def apply_stage(fitted: dict, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The members' predictions made one by a fitted stage (its stacker, else its weights and temperatures)."""
    if "stacker" in fitted:
        return apply_stacker(fitted["stacker"], frames)
    return blend(frames, member_weights(fitted, list(frames)), fitted.get("temperature", {}))


def nested_scores(frames: dict[str, pd.DataFrame], solution: pd.DataFrame, stages: tuple[str, ...],
                  k: int = NESTED_FOLDS, seed: int = 0, shrink: float = SHRINK) -> dict:
    """Honest scores of each stage: the studies split into k parts; on each, the stage is fitted on the other
    parts and applied to it; the held-out predictions of all parts are scored together, on the same rows for
    every stage (`common`: those rows of the solution; `held_out`: each stage's predictions of them)."""
    common = solution[solution["row_id"].isin(common_rows(frames))]
    studies = np.unique(row_study_ids(common["row_id"]))
    part = dict(zip(np.random.default_rng(seed).permutation(studies), np.arange(len(studies)) % k))
    which = np.array([part[s] for s in row_study_ids(common["row_id"])])
    held_out: dict[str, list[pd.DataFrame]] = {s: [] for s in stages}
    for i in range(k):
        inner, outer = common[which != i], common[which == i]
        if outer.empty or inner.empty:
            continue
        keep = set(outer["row_id"])
        held = {n: f[f["row_id"].isin(keep)] for n, f in frames.items()}
        for stage in stages:
            held_out[stage].append(apply_stage(fit_stage(stage, frames, inner, shrink), held))
    return {"scores": {s: score(common, pd.concat(p)) for s, p in held_out.items() if p}, "folds": k,
            "rows": int(len(common)), "studies": int(len(studies)),
            "held_out": {s: pd.concat(p) for s, p in held_out.items() if p}, "common": common}


def gain_quantile(solution: pd.DataFrame, base: pd.DataFrame, other: pd.DataFrame, q: float = 0.1, seed: int = 0,
                  draws: int = DRAWS) -> float:
    """The q-quantile of score(base) - score(other) (both row_id + TARGETS over the solution's rows) when the
    solution's studies are drawn again with replacement: above 0 when `other` is better by more than luck."""
    studies = row_study_ids(solution["row_id"])
    unique = np.unique(studies)
    rows_of = {s: np.flatnonzero(studies == s) for s in unique}
    ids = solution["row_id"].to_numpy()
    values = {n: f.set_index("row_id").loc[ids, list(TARGETS)].to_numpy() for n, f in (("base", base), ("other", other))}
    columns = np.array([r.split("_", 1)[1] for r in ids])
    rng, gains = np.random.default_rng(seed), []
    for _ in range(draws):
        picked = rng.choice(unique, len(unique))
        idx = np.concatenate([rows_of[s] for s in picked])
        # each drawn study gets a study id of its own, so a study drawn twice counts twice
        position = np.concatenate([np.full(len(rows_of[s]), k) for k, s in enumerate(picked)])
        new_ids = [f"{p * 10**10 + s}_{c}" for p, s, c in zip(position, studies[idx], columns[idx])]
        drawn = solution.iloc[idx].assign(row_id=new_ids)
        frame = {n: pd.DataFrame(v[idx], columns=list(TARGETS)).assign(row_id=new_ids) for n, v in values.items()}
        gains.append(score(drawn, frame["base"]) - score(drawn, frame["other"]))
    return float(np.quantile(gains, q))


def choose(frames: dict[str, pd.DataFrame], solution: pd.DataFrame, stage: str = "weights", k: int = NESTED_FOLDS,
           seed: int = 0, shrink: float = SHRINK) -> dict:
    """ensemble.json's entries: the asked stage fitted on every row where its nested score beats the plain
    mean's, else the plain mean; `final_stage` says which, why, and the nested scores (an unknown stage is
    fit_stage's ValueError, at the first nested fit)."""
    stages = ("mean",) if stage == "mean" else ("mean", stage)
    nested = nested_scores(frames, solution, stages, k, seed, shrink)
    scores, held_out, rows = nested["scores"], nested.pop("held_out"), nested.pop("common")
    if stage == "mean":
        chosen, why = "mean", "the recipe asks for the plain mean"
    else:
        nested["gain_p10"] = gain_quantile(rows, held_out["mean"], held_out[stage], seed=seed)
        if scores[stage] < scores["mean"] and nested["gain_p10"] > 0:
            chosen, why = stage, f"its nested score {scores[stage]:.4f} beats the plain mean's {scores['mean']:.4f}"
        else:
            chosen = "mean"
            why = (f"the fitted stage '{stage}' scores {scores[stage]:.4f} by nested folds, which does not beat the plain mean's "
                   f"{scores['mean']:.4f} by more than luck (the gain's 10th percentile over the studies drawn again "
                   f"is {nested['gain_p10']:+.4f})")
    fitted = fit_stage(chosen, frames, solution, shrink)
    report = {"asked": stage, "chosen": chosen, "why": why, "shrink": shrink, **nested,
              "in_sample": score(rows, apply_stage(fitted, frames)),
              "single": {n: score(rows, frames[n]) for n in sorted(frames)}}
    return {**fitted, "final_stage": report}
