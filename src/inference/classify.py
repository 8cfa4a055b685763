"""Running trained classifiers over crops: severity probabilities per row, every fold, flip TTA.

Loader processes cut each batch of studies' crops (StudyCrops) while the models run; every fold of every
member that cuts crops the same way sees the batch in one call, with both TTA views in it.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..classifier.crops import CropSpec, centre_unit, crop_table, cut_study, other_views
from ..core.constants import (
    CONDITIONS,
    COORDINATE_COLUMNS,
    FLIPPED_CONDITION,
    SLICE_ALTERNATIVE_COLUMNS,
    TARGETS,
    condition_group,
)
from ..core.device import autocast, inference_dtype
from ..core.faults import FaultLog
from ..core.memory import keep_freed_cpu_memory
from ..core.parallel import batches_ahead, loader_workers
from ..core.progress import first_line
from ..core.run_folders import BEST, fold_of, trained_folds
from ..data.tables import load_series_descriptions
from ..training.checkpoint import load_fold_models
from .context import InferenceContext

CONDITION_GROUPS = [condition_group(c) for c in CONDITIONS]  # by condition index


@dataclass(eq=False)  # hashed by identity: two folds may hold equal configs
class Member:
    """One fold of one classifier run, loaded."""

    name: str
    fold: int
    model: torch.nn.Module
    cfg: dict
    run: Path | None = None  # its fold folder, to name in faults

    @property
    def spec(self) -> CropSpec:
        return CropSpec(**self.cfg["crop"])

    @property
    def flips(self) -> bool:
        """Whether it trained on horizontally flipped crops, so the flip TTA view is one it knows."""
        return float(self.cfg["aug"]["hflip"]) > 0

    @property
    def whole_study(self) -> bool:
        """Whether it predicts a study's crops together (the study model), so every row of a study is its input."""
        return self.cfg.get("task") == "study"

    @property
    def test_views(self) -> dict[str, list[str]]:
        """Per condition group, the other series types it reads at test time beside the point's own crop (config
        `test_views`, of those it trained on: `views`); none for a study-level member, which trained on a
        study's own crops."""
        if self.whole_study:
            return {}
        return {g: list(types) for g, types in (self.cfg.get("test_views") or {}).items() if types}

    @property
    def spec_key(self) -> str:
        """Members with the same key cut the same crops."""
        return json.dumps(self.cfg["crop"], sort_keys=True)


class StudyCrops(Dataset):
    """Per study of a crop_table, for loader processes: (study id, its rows that were cut, their stored crops,
    why the study could not be cut at all or None)."""

    def __init__(self, table: pd.DataFrame, cache_dir: Path, split: str, spec: CropSpec):
        self.groups = [g for _, g in table.groupby("study_id", sort=True)]
        self.cache_dir, self.split, self.spec = Path(cache_dir), split, spec

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> tuple[int, pd.DataFrame, np.ndarray, str | None]:
        rows = self.groups[i]
        study_id = int(rows["study_id"].iloc[0])
        try:  # a row whose series or instance is missing is left out (cache.prepare has named the series)
            ok, crops, _ = cut_study(rows.to_dict("records"), self.cache_dir, self.split, self.spec)
        except Exception as err:  # noqa: BLE001 - costs this study's rows only
            return study_id, rows.iloc[:0], crops_none(self.spec), f"{type(err).__name__}: {err}"
        return study_id, rows.iloc[ok], crops[ok], None


def crops_none(spec: CropSpec) -> np.ndarray:
    """An empty batch of stored crops."""
    return np.zeros((0, spec.n_slices, spec.stored_px, spec.stored_px), np.uint8)


@torch.no_grad()
def batch_probabilities(members: list[Member], crops: np.ndarray, condition: np.ndarray, level: np.ndarray,
                        device: torch.device, hflip_tta: bool = False, study: np.ndarray | None = None,
                        needed: np.ndarray | None = None) -> dict[int, np.ndarray | Exception]:
    """Each member's severity probabilities (N, 3) for one batch of stored crops, in one forward call per member;
    with hflip_tta the flipped crops (with their mirrored condition where the flip swaps sides, as in
    training augmentation) go in the same call and the two views are averaged, for the members that trained
    on flipped crops (Member.flips; the others see one view). Every member predicts through
    row_logits (models.CropClassifier, models.StudyModel): a study-level member sees each study's crops
    together (`study`: each crop's study id; the flipped view as studies of its own). `needed` (a mask over
    the crops): the rows a per-crop member must predict; it skips the others, which get 1/3 each (rows that
    only complete a study for a study-level member). A member that fails gets its exception instead."""
    dtype = inference_dtype(device)
    n = len(crops)
    x = torch.from_numpy(np.ascontiguousarray(crops)).to(device)
    cond = torch.from_numpy(np.asarray(condition, np.int64)).to(device)
    lev = torch.from_numpy(np.asarray(level, np.int64)).to(device)
    _, which = np.unique(np.zeros(n) if study is None else np.asarray(study), return_inverse=True)
    group = torch.from_numpy(which.astype(np.int64)).to(device)
    if hflip_tta and any(m.flips for m in members):
        mirrored = torch.tensor(FLIPPED_CONDITION, device=device)
        x, cond, lev = torch.cat([x, x.flip(-1)]), torch.cat([cond, mirrored[cond]]), torch.cat([lev, lev])
        group = torch.cat([group, group + int(which.max(initial=-1)) + 1])
    some = np.flatnonzero(needed) if needed is not None and not bool(np.all(needed)) else None
    rows = None if some is None else torch.from_numpy(some).to(device)
    out: dict[int, np.ndarray | Exception] = {}
    for j, m in enumerate(members):
        both = hflip_tta and m.flips  # a member trained without flips sees the crops as they are
        mine = None if rows is None or m.whole_study else rows
        if mine is None:
            k, views = n, slice(None) if both else slice(0, n)
        else:
            k, views = len(mine), torch.cat([mine, mine + n]) if both else mine
        probs: np.ndarray | Exception = np.full((n, 3), 1 / 3, np.float32)  # a skipped row's
        if k:
            try:
                with autocast(device, dtype):
                    images = centre_unit(x[views], m.spec.size_px)
                    logits = m.model.row_logits(images, cond[views], lev[views], group[views])
                    p = torch.softmax(logits.float(), 1)
                probs[slice(None) if mine is None else some] = ((p[:k] + p[k:]) / 2 if both else p).cpu().numpy()
            except Exception as err:  # noqa: BLE001 - a fold that cannot predict costs that fold only
                probs = err
        out[j] = probs
    return out


def with_alternatives(coords: pd.DataFrame) -> pd.DataFrame:
    """coords with a `variant` and a `weight` per row: every row as given (variant 0), and, for each study where
    some row names a neighbouring slice (SLICE_ALTERNATIVE_COLUMNS, localizer.decode.slice_alternative), all
    of its rows again (variant 1) with those rows on that slice. A row's two weights are 1 - alt_weight and
    alt_weight (0 for the rows variant 1 repeats unmoved: a study-level member sees each variant as a whole
    study)."""
    weight = np.zeros(len(coords))
    if set(SLICE_ALTERNATIVE_COLUMNS) <= set(coords.columns):
        named = coords["alt_instance_number"].notna().to_numpy()
        weight = np.where(named, pd.to_numeric(coords["alt_weight"], errors="coerce").fillna(0.0).to_numpy(float), 0.0)
    out = coords.assign(variant=0, weight=1.0 - weight)
    studies = coords["study_id"].to_numpy()[weight > 0]
    if not len(studies):
        return out
    again = coords["study_id"].isin(studies).to_numpy()
    alt = coords[again].assign(variant=1, weight=weight[again])
    moved = weight[again] > 0
    alt.loc[moved, "instance_number"] = alt.loc[moved, "alt_instance_number"].astype(np.int64).to_numpy()
    return pd.concat([out, alt], ignore_index=True)


def with_views(table: pd.DataFrame, coords: pd.DataFrame, members: list[Member], ctx: InferenceContext) -> pd.DataFrame:
    """A crop table (with_alternatives' rows, `view` 0) plus, for the groups some member reads on other series
    at test time (Member.test_views), each point again on those series (crops.other_views; `view` >= 1,
    `view_type` its series type name, weight 1, variant 0)."""
    wanted: dict[str, list[str]] = {}
    for m in members if ctx.test_views else []:
        for group, types in m.test_views.items():
            wanted[group] = list(dict.fromkeys([*wanted.get(group, []), *types]))
    table = table.assign(view=0, view_type="")
    if not wanted or coords.empty:
        return table
    try:
        # Problems of this file were named when the series were read (pipeline._read_series); here it only maps.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            descriptions = load_series_descriptions(ctx.data_dir / f"{ctx.split}_series_descriptions.csv", strict=False)
        views = other_views(coords[list(COORDINATE_COLUMNS)], descriptions, ctx.cache_dir, ctx.split, wanted)
    except Exception as err:  # noqa: BLE001 - costs the other views only
        ctx.faults.add("models", "test views", f"not read ({type(err).__name__}: {first_line(err)}); each point on "
                       "its own series")
        return table
    if views.empty:
        return table
    views = crop_table(views.assign(variant=0, weight=1.0))
    return pd.concat([table, views], ignore_index=True).sort_values("study_id", kind="stable")


def _member_weights(m: Member, keys: pd.DataFrame) -> np.ndarray:
    """Each row's weight in member m's mean: its own (with_alternatives) on a point's own series; 1 on another
    series m reads at test time (its point's own crops weigh 1 together), else 0."""
    w = keys["weight"].to_numpy(float).copy()
    other = keys["view"].to_numpy() > 0
    if other.any():
        reads = m.test_views
        groups = [CONDITION_GROUPS[c] for c in keys["condition_idx"].to_numpy()[other]]
        w[other] = [float(t in reads.get(g, ())) for g, t in zip(groups, keys["view_type"].to_numpy()[other])]
    return w


def predict_members(coords: pd.DataFrame, members: list[Member], ctx: InferenceContext) -> dict[str, pd.DataFrame]:
    """Per run name: the mean probabilities (row_id + TARGETS) of its folds that predicted, for the rows with a
    crop at `coords` (on ctx's split, cache and device); a row that names a neighbouring slice gets the
    weighted mean of its two slices' predictions (with_alternatives), and a member that reads other series at
    test time (Member.test_views) the mean of that and the point's crop on each (with_views). Crops are cut
    once per crop spec, in batches of studies ahead of the models; a fold that fails is dropped (named in
    ctx.faults) and its run's other folds carry on."""
    faults, device = ctx.faults, ctx.device
    if device.type == "cpu":
        keep_freed_cpu_memory()  # batched forwards would otherwise fault in fresh pages on every call
    table = with_views(crop_table(with_alternatives(coords)), coords, members, ctx)
    by_spec: dict[str, list[Member]] = {}
    for m in members:
        by_spec.setdefault(m.spec_key, []).append(m)
    sums: dict[Member, list[np.ndarray]] = {m: [] for m in members}  # per member: its batches' probabilities
    ids: dict[str, list[pd.DataFrame]] = {}  # per crop spec: each batch's row_id and weight
    failed: set[Member] = set()
    for key, group in by_spec.items():
        ids[key] = []
        names = ", ".join(dict.fromkeys(m.name for m in group))
        for batch in batches_ahead(StudyCrops(table, ctx.cache_dir, ctx.split, group[0].spec), ctx.studies_per_batch,
                                   loader_workers(ctx.workers, ctx.device.type), f"classify {names}"):
            for study_id, _, _, error in batch:
                if error is not None:
                    faults.add("study", f"study {study_id}", f"crops for {names} failed ({error})", study_id=study_id)
            rows = pd.concat([r for _, r, _, _ in batch])
            if not len(rows):
                continue
            crops = np.concatenate([c for _, _, c, _ in batch])
            live = [m for m in group if m not in failed]
            # A study-level member sees each (study, variant, view) as a study of its own (a point has two other
            # series at most, so views fit in the factor 8); it never reads the views (weight 0, _member_weights).
            probs = batch_probabilities(live, crops, rows["condition_idx"].to_numpy(), rows["level_idx"].to_numpy(),
                                        device, hflip_tta=ctx.tta,
                                        study=(rows["study_id"].to_numpy() * 2 + rows["variant"].to_numpy()) * 8
                                        + rows["view"].to_numpy(), needed=rows["weight"].to_numpy() > 0)
            for j, m in enumerate(live):
                if isinstance(probs[j], Exception):
                    failed.add(m)
                    where = f"{m.run / BEST}: " if m.run is not None else ""
                    faults.add("fold", f"{m.name} fold {m.fold}",
                               f"{where}cannot predict ({first_line(probs[j])}); fold dropped")
                else:
                    sums[m].append(probs[j])
            ids[key].append(rows[["row_id", "weight", "view", "view_type", "condition_idx"]])
    out: dict[str, pd.DataFrame] = {}
    for name in dict.fromkeys(m.name for m in members):
        folds = [m for m in members if m.name == name and m not in failed]
        if not folds:
            faults.add("member", name, "every fold failed; member dropped, the ensemble renormalises over the others")
            continue
        per_fold = []
        for m in folds:
            keys = (pd.concat(ids[m.spec_key]) if ids[m.spec_key]
                    else pd.DataFrame(columns=["row_id", "weight", "view", "view_type", "condition_idx"]))
            p = np.concatenate(sums[m]) if sums[m] else np.zeros((0, 3))
            w = _member_weights(m, keys)
            weighted = pd.DataFrame(p * w[:, None], columns=list(TARGETS)).assign(row_id=keys["row_id"].to_numpy(), w=w)
            total = weighted.groupby("row_id").sum()
            per_fold.append(total[list(TARGETS)].div(total["w"], axis=0))  # no weight left: NaN, dropped below
        out[name] = (sum(per_fold) / len(per_fold)).dropna().reset_index()
    return out


def load_members(runs: Path, names: list[str], device: torch.device, faults: FaultLog,
                 folds: list[int] | None = None) -> list[Member]:
    """Every trained fold (or those listed) of each named classifier run, loaded once. A fold that does not
    load is dropped, and a run left without any is dropped from the ensemble; each is named in `faults`."""
    members = []
    for name in names:
        loaded = load_fold_models(runs, name, device, faults, folds)
        members += [Member(name, fold_of(run), model, cfg, run) for run, model, cfg in loaded]
        if not loaded:
            faults.add("member", name, "no trained fold under " + str(runs) if not trained_folds(runs, name, folds)
                       else "every fold failed; member dropped, the ensemble renormalises over the others")
    return members


def run_classifiers(coords: pd.DataFrame, names: list[str], ctx: InferenceContext) -> dict[str, pd.DataFrame]:
    """Per classifier run of ctx.runs: its folds' mean crop probabilities, for the rows with a crop at `coords`.

    A fold that fails (its checkpoint does not load, or it cannot predict) is dropped and the run's other
    folds carry on; a run left without any fold is dropped from the ensemble. Each is named in ctx.faults.
    """
    members = load_members(ctx.runs, names, ctx.device, ctx.faults)
    return predict_members(coords, members, ctx)
