"""What the generic train loop trains: a task builds the data, the loss and the validation numbers.

The loop (engine.fit) only calls a task's methods and the model's forward, so adding a model or a whole
stage (the localizers) is a registry entry, never a copy of the loop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .augment import eval_transform, train_transform
from .cache import load_series, prepare, series_cache_path
from .constants import TARGETS
from .crops import CropSpec, build_crops
from .datasets import CropDataset
from .folds import fold_solution, load_folds, make_folds
from .localization import (
    CHANNELS,
    CONDITIONS_OF,
    COORD_COLUMNS,
    SliceDataset,
    build_slice_store,
    decode_series_points,
    loc_transform,
    point_errors,
)
from .metric import overlay, prior_submission, score_parts
from .paths import default_cache_dir
from .tables import (
    labels_long,
    load_coordinates,
    load_series_descriptions,
    load_submission,
    load_train,
    solution_frame,
)


def _cache_dir(cfg: dict) -> Path:
    return Path(cfg["cache_dir"]) if cfg.get("cache_dir") else default_cache_dir(cfg["data_dir"])


def ensure_folds(cfg: dict, train: pd.DataFrame) -> pd.DataFrame:
    """The folds file named in the config; written with the default settings when it does not exist yet."""
    path = Path(cfg["folds"])
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_folds(train).to_csv(path, index=False)
        print(f"no folds file at {path}: wrote one (5 folds, seed 42)")
    folds = load_folds(path)
    unknown = set(train["study_id"]) - set(folds["study_id"])
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} studies of train.csv have no fold (e.g. {sorted(unknown)[0]})")
    return folds


def training_tables(cfg: dict, is_main: bool) -> tuple[Path, Path, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """What every task starts from: data and cache folders (series decoded on the main process), train
    labels, folds and the coordinates (cfg['coords'] or the data's train_label_coordinates.csv)."""
    data_dir = Path(cfg["data_dir"])
    cache_dir = _cache_dir(cfg)
    if is_main:  # decode any series not cached yet (a no-op once prepare.py has run)
        prepare(data_dir, cache_dir, "train", workers=cfg["workers"])
    train = load_train(data_dir / "train.csv")
    folds = ensure_folds(cfg, train)
    coords = load_coordinates(Path(cfg["coords"]) if cfg.get("coords") else data_dir / "train_label_coordinates.csv")
    return data_dir, cache_dir, train, folds, coords


class ClassifyTask:
    """Severity classification of level-wise crops cut at the labelled coordinates."""

    input_keys = ("image", "condition", "level")

    def __init__(self, cfg: dict, is_main: bool = True):
        self.cfg = cfg
        _, cache_dir, self.train, self.folds, coords = training_tables(cfg, is_main)
        self.spec = CropSpec(**cfg["crop"])
        self.crops, index = build_crops(coords, cache_dir, "train", self.spec, cache_dir / "crops", cfg["workers"])
        labels = labels_long(self.train)[["row_id", "label"]]
        index = index.merge(labels, on="row_id", how="left")
        fold_of = dict(zip(self.folds["study_id"], self.folds["fold"]))
        index["fold"] = index["study_id"].map(fold_of)
        self.train_index = index[(index["fold"] != cfg["fold"]) & index["label"].notna()].reset_index(drop=True)
        self.val_index = index[index["fold"] == cfg["fold"]].reset_index(drop=True)
        if self.train_index.empty or self.val_index.empty:
            raise ValueError(f"fold {cfg['fold']}: {len(self.train_index)} training and {len(self.val_index)} validation crops")
        self.val_solution = fold_solution(self.train, self.folds, cfg["fold"])
        train_studies = self.folds.loc[self.folds["fold"] != cfg["fold"], "study_id"]
        self.prior = prior_submission(solution_frame(self.train, train_studies), self.val_solution["row_id"].tolist())
        self.class_weights = torch.tensor(cfg["class_weights"], dtype=torch.float32)

    def references(self) -> dict[str, float]:
        """Scores of the constant prior and, on synthetic data, of the oracle on this fold's studies."""
        refs = {"prior": score_parts(self.val_solution, self.prior)["score"]}
        oracle = Path(self.cfg["data_dir"]) / "train_oracle.csv"
        if oracle.is_file():
            refs["oracle"] = score_parts(self.val_solution, load_submission(oracle))["score"]
        return refs

    def train_dataset(self) -> CropDataset:
        return CropDataset(self.crops, self.train_index, train_transform(self.cfg["aug"], self.spec.size_px))

    def val_dataset(self) -> CropDataset:
        return CropDataset(self.crops, self.val_index, eval_transform(self.spec.size_px))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Cross-entropy with the metric's class weights 1/2/4; unknown labels (-1) are ignored."""
        label = batch["label"].to(logits.device)
        return F.cross_entropy(logits.float(), label, weight=self.class_weights.to(logits.device), ignore_index=-1)

    def evaluate(self, logits: torch.Tensor, rows: torch.Tensor) -> tuple[dict, pd.DataFrame]:
        """Validation loss, competition score and accuracy of one pass; returns them and the oof frame.

        Validation rows without a crop (no coordinate or series) get the training prior, so oof.csv has
        every row of the fold and scores against the fold's full solution.
        """
        index = self.val_index.iloc[rows.numpy()]
        probs = torch.softmax(logits.float(), 1).numpy()
        labelled = index["label"].notna().to_numpy()
        label = torch.tensor(index["label"].fillna(-1).to_numpy(), dtype=torch.long)
        val_loss = float(F.cross_entropy(logits.float()[labelled], label[labelled], weight=self.class_weights))
        pred = pd.DataFrame(probs, columns=list(TARGETS))
        pred.insert(0, "row_id", index["row_id"].to_numpy())
        oof = overlay(self.prior, pred)
        parts = score_parts(self.val_solution, oof)
        acc = float((probs[labelled].argmax(1) == label[labelled].numpy()).mean())
        return {"val_loss": val_loss, "score": parts["score"], "acc": acc,
                **{f"score_{k}": v for k, v in parts.items() if k != "score"}}, oof


class LocalizeTask:
    """Heatmap keypoints on one series type (cfg['series_type']); validation error in mm is the score."""

    input_keys = ("image",)

    def __init__(self, cfg: dict, is_main: bool = True):
        self.cfg = cfg
        self.series_type = cfg["series_type"]
        if self.series_type not in CHANNELS:
            raise ValueError(f"series_type must be one of {sorted(CHANNELS)}, not {self.series_type!r}")
        data_dir, self.cache_dir, _, folds, coords = training_tables(cfg, is_main)
        series = load_series_descriptions(data_dir / "train_series_descriptions.csv")
        loc = cfg["loc"]
        self.store = build_slice_store(series, coords, self.cache_dir, self.series_type, loc["size_px"],
                                       self.cache_dir / "slices", loc["neighbour_weight"])
        fold_of = self.store.index["study_id"].map(dict(zip(folds["study_id"], folds["fold"])))
        train_rows = np.flatnonzero((fold_of != cfg["fold"]).to_numpy())
        # Keep every slice with a target and as many of the others (drawn once, seeded): most sagittal slices
        # show no labelled structure, and seeing all of them every epoch only slows training down.
        positive = np.isin(train_rows, self.store.points["slice"].to_numpy())
        negatives = train_rows[~positive]
        n_neg = min(len(negatives), int(round(loc["negative_ratio"] * positive.sum())))
        keep = np.random.default_rng(cfg["seed"]).choice(negatives, n_neg, replace=False) if n_neg else negatives[:0]
        self.train_rows = np.sort(np.concatenate([train_rows[positive], keep]))
        self.val_rows = np.flatnonzero((fold_of == cfg["fold"]).to_numpy())
        if len(self.train_rows) == 0 or len(self.val_rows) == 0:
            raise ValueError(f"{self.series_type} fold {cfg['fold']}: {len(self.train_rows)} training and "
                             f"{len(self.val_rows)} validation slices")
        val_series = set(self.store.index["series_id"].iloc[self.val_rows])
        self.val_coords = coords[coords["series_id"].isin(val_series) & coords["condition"].isin(CONDITIONS_OF[self.series_type])]
        self._val = self._dataset(self.val_rows, False)

    def _dataset(self, rows: np.ndarray, train: bool) -> SliceDataset:
        return SliceDataset(self.store, rows, CHANNELS[self.series_type], self.cfg["loc"]["sigma"], loc_transform(train))

    def train_dataset(self) -> SliceDataset:
        return self._dataset(self.train_rows, True)

    def val_dataset(self) -> SliceDataset:
        return self._val

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Binary cross-entropy on Gaussian targets, weighted up where the target is high."""
        target = batch["target"].to(logits.device)
        weight = 1.0 + self.cfg["loc"]["pos_weight"] * target
        return F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight)

    def evaluate(self, logits: torch.Tensor, rows: torch.Tensor) -> tuple[dict, pd.DataFrame]:
        """Decode every validation series as localize.py does; score = mean 3D error in mm (capped at 50)."""
        targets = torch.stack([self._val[int(i)]["target"] for i in rows])
        val_loss = float(self.loss(logits, {"target": targets}))
        heat = torch.sigmoid(logits).numpy()
        index = self.store.index.iloc[self.val_rows[rows.numpy()]].reset_index(drop=True)
        preds = []
        for (study_id, series_id), g in index.groupby(["study_id", "series_id"], sort=False):
            g = g.sort_values("k")
            series = load_series(series_cache_path(self.cache_dir, "train", study_id, series_id))
            labelled = self.val_coords[self.val_coords["series_id"] == series_id]
            preds.append(decode_series_points(self.series_type, series, heat[g.index.to_numpy()], g["k"].to_numpy(),
                                              self.cfg["loc"]["size_px"], int(study_id), int(series_id), labelled))
        pred = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=COORD_COLUMNS)
        err = point_errors(pred, self.val_coords, self.cache_dir, "train")
        capped = np.minimum(err["error_3d_mm"].fillna(50.0).to_numpy(), 50.0)
        metrics = {"val_loss": val_loss, "score": float(capped.mean()) if len(capped) else 50.0,
                   "acc": float(err["instance_ok"].mean()) if len(err) else 0.0,
                   "median_mm": float(err["error_mm"].median()), "within_5mm": float((err["error_mm"] <= 5).mean())}
        return metrics, pred


TASKS = {"classify": ClassifyTask, "localize": LocalizeTask}
