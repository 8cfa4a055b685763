"""What the train loop trains for the localizer of one series type (cfg['series_type'])."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..core.constants import PREDICTED_COORDINATE_COLUMNS
from ..core.registry import build_model, register_task
from ..data.cache import load_series, series_cache_path
from ..data.inputs import check_tables, prepare_tables, read_tables
from ..data.tables import load_series_descriptions
from .data import SliceDataset, SliceStore, build_slice_store, loc_transform
from .decode import HeatSource, decode_series_points
from .errors import point_errors
from .plan import part


def level_loss(logits: torch.Tensor, target: torch.Tensor, peak: float = 0.3) -> torch.Tensor:
    """Cross-entropy across the level channels at the cells where a labelled point's target exceeds `peak`,
    its level being the channel with the highest target there: which disc is which, not only where the
    discs are. Weighted by the target, so a point's centre counts most; 0 for a batch without points."""
    top, level = target.max(1)  # (B, h, w)
    w = top * (top > peak)
    ce = F.cross_entropy(logits.float(), level, reduction="none")  # (B, h, w)
    return (ce * w).sum() / w.sum().clamp_min(1e-6)  # no branch on the data: no host sync in the step


@register_task("localizer")
class LocalizerTask:
    """Heatmap keypoints on one series type (cfg['series_type']); validation error in mm is the score."""

    input_keys = ("image",)
    shown = ("val_loss", "score", "right_slice")
    loader_work = True  # each slice stack is augmented in the loader (data.loc_transform)

    def __init__(self, cfg: dict, device: torch.device = torch.device("cpu")):
        self.cfg = cfg
        self.part = part(cfg["series_type"])

    def check(self) -> None:
        check_tables(self.cfg)

    def build_model(self) -> torch.nn.Module:
        return build_model(self.cfg)

    def _store(self, data_dir: Path, cache_dir: Path, coords: pd.DataFrame) -> SliceStore:
        series = load_series_descriptions(data_dir / "train_series_descriptions.csv")
        loc = self.cfg["loc"]
        return build_slice_store(series, coords, cache_dir, self.part.series_type, loc["size_px"], cache_dir / "slices",
                                 loc["neighbour_weight"])

    def prepare(self) -> None:
        prepare_tables(self.cfg)
        data_dir, cache_dir, _, _, coords = read_tables(self.cfg)
        self._store(data_dir, cache_dir, coords)

    def load(self) -> None:
        cfg, loc = self.cfg, self.cfg["loc"]
        data_dir, self.cache_dir, _, folds, coords = read_tables(cfg)
        self.store = self._store(data_dir, self.cache_dir, coords)
        row_fold = self.store.index["study_id"].map(dict(zip(folds["study_id"], folds["fold"])))
        train_rows = np.flatnonzero((row_fold != cfg["fold"]).to_numpy())
        # Keep every slice with a target and as many of the others (drawn once, seeded): most sagittal slices
        # show no labelled structure, and seeing all of them every epoch only slows training down.
        positive = np.isin(train_rows, self.store.points["slice"].to_numpy())
        negatives = train_rows[~positive]
        n_neg = min(len(negatives), int(round(loc["negative_ratio"] * positive.sum())))
        keep = np.random.default_rng(cfg["seed"]).choice(negatives, n_neg, replace=False) if n_neg else negatives[:0]
        self.train_rows = np.sort(np.concatenate([train_rows[positive], keep]))
        self.val_rows = np.flatnonzero((row_fold == cfg["fold"]).to_numpy())
        if len(self.train_rows) == 0 or len(self.val_rows) == 0:
            raise ValueError(f"{self.part.series_type} fold {cfg['fold']}: {len(self.train_rows)} training and "
                             f"{len(self.val_rows)} validation slices")
        val_series = set(self.store.index["series_id"].iloc[self.val_rows])
        self.val_coords = coords[coords["series_id"].isin(val_series) & coords["condition"].isin(self.part.conditions)]
        self._val = self._dataset(self.val_rows, False)

    def to_device(self, batch: dict, device: torch.device, train: bool) -> dict[str, torch.Tensor]:
        return {k: batch[k].to(device, non_blocking=True) for k in self.input_keys}

    def references(self) -> dict[str, float]:
        return {}

    def _dataset(self, rows: np.ndarray, train: bool) -> SliceDataset:
        return SliceDataset(self.store, rows, self.part.point_channels, self.cfg["loc"]["sigma"], loc_transform(train),
                            any_channel=self.part.searched)

    def train_dataset(self) -> SliceDataset:
        return self._dataset(self.train_rows, True)

    def val_dataset(self) -> SliceDataset:
        return self._val

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Binary cross-entropy on Gaussian targets, weighted up where the target is high, plus (searched
        series) level_weight x the level cross-entropy of level_loss."""
        target = batch["target"].to(logits.device)
        weight = 1.0 + self.cfg["loc"]["pos_weight"] * target
        loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight)
        if self.part.searched and self.cfg["loc"]["level_weight"]:
            n = self.part.point_channels
            loss = loss + self.cfg["loc"]["level_weight"] * level_loss(logits[:, :n], target[:, :n])
        return loss

    def evaluate(self, logits: torch.Tensor, rows: torch.Tensor) -> tuple[dict, pd.DataFrame]:
        """Decode every validation series as test-time localization does; score = mean 3D error in mm (capped at 50)."""
        targets = torch.stack([self._val.target(int(i)) for i in rows])
        val_loss = float(self.loss(logits, {"target": targets}))
        heat = torch.sigmoid(logits).numpy()
        index = self.store.index.iloc[self.val_rows[rows.numpy()]].reset_index(drop=True)
        preds = []
        for (study_id, series_id), g in index.groupby(["study_id", "series_id"], sort=False):
            g = g.sort_values("k")
            series = load_series(series_cache_path(self.cache_dir, "train", study_id, series_id), pixels=False)
            labelled = self.val_coords[self.val_coords["series_id"] == series_id]
            src = HeatSource(int(study_id), int(series_id), series, self.cfg["loc"]["size_px"])
            preds.append(decode_series_points(self.part, src, heat[g.index.to_numpy()], g["k"].to_numpy(), labelled))
        pred = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=list(PREDICTED_COORDINATE_COLUMNS))
        err = point_errors(pred, self.val_coords, self.cache_dir, "train")
        capped = np.minimum(err["error_3d_mm"].fillna(50.0).to_numpy(), 50.0)
        metrics = {"val_loss": val_loss, "score": float(capped.mean()) if len(capped) else 50.0,
                   "right_slice": float(err["instance_ok"].mean()) if len(err) else 0.0,
                   "median_mm": float(err["error_mm"].median()), "within_5mm": float((err["error_mm"] <= 5).mean())}
        return metrics, pred
