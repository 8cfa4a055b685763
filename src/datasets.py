"""The classifier's torch dataset over the crop cache, and the flip that swaps left and right."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .augment import was_flipped
from .constants import AXIAL_T2, CONDITION_SERIES, CONDITIONS, MIRROR_CONDITION

_MIRROR_IDX = np.array([CONDITIONS.index(MIRROR_CONDITION[c]) for c in CONDITIONS])
# A horizontal flip mirrors patient left and right only on axial images; on a sagittal crop it swaps
# anterior and posterior, which leaves the condition's side as it is.
_FLIP_SWAPS = np.array([CONDITION_SERIES[c] == AXIAL_T2 for c in CONDITIONS])


def flip_condition(condition_idx: int) -> int:
    """Condition index after a horizontal flip of its crop (left <-> right on axial crops)."""
    return int(_MIRROR_IDX[condition_idx]) if _FLIP_SWAPS[condition_idx] else int(condition_idx)


class CropDataset(Dataset):
    """Items: image (S, P, P) float32 in [0, 1], condition, level, label (-1 when unknown), row."""

    def __init__(self, crops: np.ndarray, index: pd.DataFrame, transform: A.Compose):
        self.crops = crops
        self.index = index.reset_index(drop=True)
        self.transform = transform
        self._crop = self.index["crop"].to_numpy()
        self._cond = self.index["condition_idx"].to_numpy()
        self._level = self.index["level_idx"].to_numpy()
        labels = self.index["label"].to_numpy(dtype=float) if "label" in self.index else np.full(len(self.index), np.nan)
        self._label = np.where(np.isnan(labels), -1, labels).astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        stack = np.asarray(self.crops[self._crop[i]], dtype=np.float32).transpose(1, 2, 0)  # HWC, slices as channels
        out = self.transform(image=np.ascontiguousarray(stack))
        condition = flip_condition(self._cond[i]) if was_flipped(out) else int(self._cond[i])
        image = out["image"]
        if image.ndim == 2:
            image = image[..., None]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "condition": torch.tensor(condition),
            "level": torch.tensor(int(self._level[i])),
            "label": torch.tensor(int(self._label[i])),
            "row": torch.tensor(i),
        }


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy and the worker's albumentations pipeline from torch's seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and getattr(info.dataset, "transform", None) is not None:
        info.dataset.transform.set_random_seed(seed)

