"""The study-level model's task: every crop of a study in one item, all 25 (condition, level) outputs at once.

Crops are those of the classifier (ClassifierTask cuts them); an item is a study: its crops placed at their
(condition, level) position, a mask of the positions that have a crop, and the labels (-1 where unknown).
Training augments every crop on the device (DeviceAugment, as the classifier's device path); validation
scores the rows with a crop exactly as the classifier does (oof.csv, prior for the rest).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..core.constants import LEVELS
from ..core.metric import any_severe_term
from ..core.registry import register_task
from .crops import centre_unit
from .datasets import draw_variants
from .models import N_PAIRS as N_POSITIONS
from .models import pair_index, positions
from .task import ClassifierTask


class StudyDataset(Dataset):
    """Items: crops (25, S, P, P) 8-bit raw (zeros where missing), mask (25), label (25; -1 unknown), row (the
    study's index in `studies`)."""

    def __init__(self, crops: np.ndarray, index: pd.DataFrame, variants: np.ndarray | None = None):
        """variants: (rows of index, V) crop numbers of each row's jittered variants; each item draws one per crop."""
        self.crops = crops
        self.variants = variants
        self.index = index.reset_index(drop=True)
        self.studies = sorted(self.index["study_id"].unique())
        self._rows = {s: g for s, g in self.index.groupby("study_id")}

    def __len__(self) -> int:
        return len(self.studies)

    def rows(self, i: int) -> tuple[pd.DataFrame, np.ndarray]:
        """Item i's rows of `index` (the crops it has) and their positions among the study's N_POSITIONS."""
        rows = self._rows[self.studies[i]]
        return rows, pair_index(rows["condition_idx"], rows["level_idx"]).to_numpy()

    def __getitem__(self, i: int) -> dict:
        rows, pos = self.rows(i)
        crops = np.zeros((N_POSITIONS, *self.crops.shape[1:]), dtype=self.crops.dtype)
        numbers = rows["crop"].to_numpy() if self.variants is None else draw_variants(self.variants, rows.index.to_numpy())
        crops[pos] = self.crops[numbers]
        mask = np.zeros(N_POSITIONS, dtype=bool)
        mask[pos] = True
        label = np.full(N_POSITIONS, -1, dtype=np.int64)
        known = rows["label"].notna().to_numpy()
        label[pos[known]] = rows["label"].to_numpy()[known].astype(np.int64)
        return {"image": torch.from_numpy(crops), "mask": torch.from_numpy(mask), "label": torch.from_numpy(label),
                "row": torch.tensor(i)}


@register_task("study")
class StudyTask(ClassifierTask):
    """Severity of every (condition, level) of a study from all its crops together (models.StudyModel)."""

    input_keys = ("image", "condition", "level", "mask")
    # A study's positions hold its labelled crops alone; with cfg['views'] the store is the per-crop runs' (one
    # store for both), its other views unread.
    trains_other_views = False

    def __init__(self, cfg: dict, device: torch.device = torch.device("cpu")):
        super().__init__({**cfg, "aug": {**cfg["aug"], "where": "device"}}, device)  # crops augmented there

    def load(self) -> None:
        super().load()
        self._train = StudyDataset(self.crops, self.train_index, self.train_variants)
        self._val = StudyDataset(self.crops, self.val_index)

    def train_dataset(self) -> StudyDataset:
        return self._train

    def val_dataset(self) -> StudyDataset:
        return self._val

    def to_device(self, batch: dict, device: torch.device, train: bool) -> dict[str, torch.Tensor]:
        """Crops as float in [0, 1] at size_px (augmented one by one in training), every position's condition
        (mirrored where an axial crop was flipped) and level, and the mask."""
        images = batch["image"].to(device, non_blocking=True)
        b = images.shape[0]
        condition, level = (t.to(device).repeat(b) for t in positions())
        flat = images.flatten(0, 1)
        if train:
            flat, condition = self.device_augment(flat, condition)
        else:
            flat = centre_unit(flat, self.spec.size_px)
        return {"image": flat.view(b, N_POSITIONS, *flat.shape[1:]), "condition": condition.view(b, -1),
                "level": level.view(b, -1), "mask": batch["mask"].to(device, non_blocking=True)}

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The classifier's weighted cross-entropy over every position with a crop and a label, plus
        study.any_severe_weight x the metric's any-severe-spinal term (any_severe_loss)."""
        label = torch.where(batch["mask"].to(logits.device), batch["label"].to(logits.device), -1)
        loss = super().loss(logits.reshape(-1, 3), {"label": label.reshape(-1)})
        weight = self.cfg["study"]["any_severe_weight"]
        return loss + weight * any_severe_loss(logits, label, self.class_weights) if weight else loss

    def evaluate(self, logits: torch.Tensor, rows: torch.Tensor) -> tuple[dict, pd.DataFrame]:
        """The classifier's numbers on the positions that had a crop (rows of val_index)."""
        flat_logits, flat_rows = [], []
        for k, i in enumerate(rows.tolist()):
            g, pos = self._val.rows(i)
            flat_logits.append(logits[k, pos])
            flat_rows.append(torch.from_numpy(g.index.to_numpy()))
        return super().evaluate(torch.cat(flat_logits), torch.cat(flat_rows))


def any_severe_loss(logits: torch.Tensor, label: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """The metric's any-severe-spinal term (stacker.any_severe_term) on a batch of studies (B, 25, 3): each
    study's labelled spinal positions, weighted by their class weights."""
    spinal = slice(0, len(LEVELS))  # CONDITIONS[0] is the spinal canal; positions are condition-major
    severe = torch.softmax(logits[:, spinal].float(), -1)[..., 2]
    lab = label[:, spinal]
    known = lab >= 0
    study = torch.arange(len(lab), device=lab.device)[:, None].expand_as(lab)
    return any_severe_term(severe[known], lab[known] == 2, class_weights.to(severe.device)[lab[known]], study[known],
                           eps=1e-7)
