"""The fold x model ensemble: weights per model and a temperature per condition group, fitted on OOF."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar

from ..core.constants import GROUPS, TARGETS, group_of
from ..core.metric import score
from ..core.progress import first_line
from ..core.run_folders import OOF, classifier_runs, is_run_name, trained_folds
from ..data.tables import DataError, load_submission


def sharpen(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """Temperature on probabilities: p^(1/T), renormalised (T > 1 softens, T < 1 sharpens)."""
    t = np.asarray(temperature, dtype=float)
    if t.ndim == 1:
        t = t[:, None]
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / t
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(1, keepdims=True)


def common_rows(frames: dict[str, pd.DataFrame], names: list[str] | None = None) -> pd.Series:
    """The row ids every member (of `names`, default all of `frames`) predicted, in the first one's order."""
    names = list(frames) if names is None else list(names)
    ids = frames[names[0]]["row_id"]
    for n in names[1:]:
        ids = ids[ids.isin(set(frames[n]["row_id"]))]
    return ids


def blend(frames: dict[str, pd.DataFrame], weights: dict[str, float], temperature: dict[str, float]) -> pd.DataFrame:
    """Weighted mean of the models' probabilities on their common rows, then the group temperatures."""
    names = [n for n in frames if weights.get(n, 0) > 0]
    if not names:
        raise ValueError("no model has a positive weight")
    ids = common_rows(frames, names)
    total = sum(weights[n] for n in names)
    probs = sum(weights[n] / total * frames[n].set_index("row_id").loc[ids, list(TARGETS)].to_numpy() for n in names)
    t = np.array([temperature.get(group_of(r), 1.0) for r in ids])
    out = pd.DataFrame(sharpen(probs, t), columns=list(TARGETS))
    out.insert(0, "row_id", ids.to_numpy())
    return out


def collect_oof(runs: Path, names: list[str] | None = None, file: str = OOF) -> dict[str, pd.DataFrame]:
    """Each classifier run's out-of-fold predictions (`file` of each fold folder: oof.csv, or OOF_PREDICTED)
    over all of its folds (every classifier run by default)."""
    out = {}
    bad = [n for n in names or [] if not is_run_name(runs, n)]
    if bad:
        raise DataError(f"{runs}: {', '.join(map(repr, bad))} not a run folder inside it")
    for name in classifier_runs(runs) if names is None else names:
        frames = [load_submission(d / file) for d in trained_folds(runs, name) if (d / file).is_file()]
        if frames:
            out[name] = pd.concat(frames, ignore_index=True).drop_duplicates("row_id")
    return out


def _pull(weights: dict[str, float], temps: dict[str, float], shrink: float) -> float:
    """The pull toward the plain mean: shrink times the squared distance of the weights from equal (times the
    member count) plus each temperature's squared log; 0 at equal weights and temperature 1."""
    if not shrink:
        return 0.0
    w = np.array(list(weights.values()))
    return shrink * (len(w) * float(((w - 1 / len(w)) ** 2).sum()) + sum(float(np.log(t)) ** 2 for t in temps.values()))


def fit_ensemble(frames: dict[str, pd.DataFrame], solution: pd.DataFrame, shrink: float = 0.0) -> dict:
    """Model weights (non-negative, summing to 1) and group temperatures minimising the OOF score plus the pull
    toward equal weights and temperature 1 (shrink, _pull)."""
    names = sorted(frames)
    common = solution[solution["row_id"].isin(common_rows(frames))]
    if common.empty:
        raise ValueError("the models' out-of-fold predictions share no scored row")
    temps = {g: 1.0 for g in GROUPS}

    def weights_of(z: np.ndarray) -> dict[str, float]:
        w = np.exp(z - z.max())
        return {n: float(v) for n, v in zip(names, w / w.sum())}

    def objective(z: np.ndarray) -> float:
        return score(common, blend(frames, weights_of(z), temps)) + _pull(weights_of(z), temps, shrink)

    z = np.zeros(len(names))
    if len(names) > 1:
        simplex = np.vstack([z, np.eye(len(names))])  # unit steps: weights from 1/2 to about 1/4..3/4 at once
        z = minimize(objective, z, method="Nelder-Mead",
                     options={"xatol": 1e-3, "fatol": 1e-6, "maxiter": 300, "initial_simplex": simplex}).x
    weights = weights_of(z)
    for _ in range(2):  # coordinate descent over the groups (the any-severe term couples them a little)
        for g in GROUPS:
            def by_t(t: float, g=g) -> float:
                return score(common, blend(frames, weights, {**temps, g: t})) + _pull(weights, {**temps, g: t}, shrink)
            temps[g] = float(minimize_scalar(by_t, bounds=(0.5, 2.0), method="bounded", options={"xatol": 1e-3}).x)
    final = score(common, blend(frames, weights, temps))
    singles = {n: score(common, frames[n]) for n in names}
    return {"weights": weights, "temperature": temps, "oof_score": final, "oof_single": singles,
            "rows": int(len(common))}


def member_weights(fitted: dict, names: list[str]) -> dict[str, float]:
    """Each member's weight from a fitted ensemble (a member it does not name gets 1), equal without one."""
    return {n: fitted["weights"].get(n, 1.0) for n in names} if fitted.get("weights") else {n: 1.0 for n in names}


def _number(value) -> float | None:
    """A JSON value as a finite float, else None (a bool, a string, NaN, Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


def load(path: Path | None, faults=None) -> dict:
    """ensemble.json, validated: weights finite and >= 0 with a positive sum, temperatures finite and > 0 of
    known groups, a prior of three finite non-negative values per group. An entry that is not is named (in
    `faults`, a FaultLog, as unit 'ensemble'; else warned) and falls back alone: a weight to the mean of the
    valid ones (equal weights when none is valid or they sum to 0), a temperature to 1, the prior to the
    data's. A file that does not parse gives equal weights and no temperature. No file: the same, warned."""
    empty = {"weights": {}, "temperature": {}}
    if path is None:
        return empty
    path = Path(path)
    if not path.is_file():
        warnings.warn(f"no ensemble file at {path}: equal weights, no temperature", stacklevel=2)
        return empty

    def bad(what: str) -> None:
        message = f"{path}: {what}"
        if faults is not None:
            faults.add("ensemble", "ensemble file", message)
        else:
            warnings.warn(message, stacklevel=3)

    try:
        fitted = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        bad(f"does not read ({first_line(err)}); equal weights, no temperature")
        return empty
    if not isinstance(fitted, dict):
        bad("not a JSON object; equal weights, no temperature")
        return empty
    out = {**fitted, "weights": _valid_weights(fitted.get("weights", {}), bad),
           "temperature": _valid_temperatures(fitted.get("temperature", {}), bad)}
    if "prior" in fitted and not _valid_prior(fitted["prior"]):
        bad("'prior' is not three finite non-negative values per group; the data's prior is used")
        out.pop("prior")
    return out


def _valid_weights(weights, bad) -> dict[str, float]:
    """ensemble.json's weights with each invalid one (not finite and >= 0) named and set to the mean of the
    valid ones; all equal when none is valid or they sum to 0."""
    if not isinstance(weights, dict):
        bad("'weights' is not an object; equal weights")
        return {}
    valid = {n: _number(w) for n, w in weights.items()}
    for name, w in valid.items():
        if w is None or w < 0:
            bad(f"weight of {name!r} is {weights[name]!r}, not a finite number >= 0; it gets the mean of the others")
    good = {n: w for n, w in valid.items() if w is not None and w >= 0}
    if weights and sum(good.values()) <= 0:
        if good:
            bad("the weights sum to 0; equal weights")
        return {n: 1.0 for n in weights}
    mean = sum(good.values()) / len(good) if good else 1.0
    return {n: good.get(n, mean) for n in weights}


def _valid_temperatures(temps, bad) -> dict[str, float]:
    """ensemble.json's temperatures of known groups that are finite and > 0; each other one named (so 1)."""
    out: dict[str, float] = {}
    for group, t in (temps if isinstance(temps, dict) else {}).items():
        value = _number(t)
        if group not in GROUPS:
            bad(f"temperature of unknown group {group!r} ignored (groups: {', '.join(GROUPS)})")
        elif value is None or value <= 0:
            bad(f"temperature of {group} is {t!r}, not a finite number > 0; it is 1")
        else:
            out[group] = value
    return out


def _valid_prior(prior) -> bool:
    """Whether a prior table holds three finite non-negative values with a positive sum for every group."""
    return isinstance(prior, dict) and all(
        isinstance(prior.get(g), list) and len(prior[g]) == len(TARGETS)
        and all(_number(v) is not None and v >= 0 for v in prior[g]) and sum(prior[g]) > 0 for g in GROUPS)
