"""The classifier's torch dataset over the crop cache, and the flip that swaps left and right."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..core.constants import FLIPPED_CONDITION
from ..data.cache import to_unit
from .augment import was_flipped


def draw_variants(variants: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One crop number per row, drawn among that row's variants (variants: (rows, V), crops.jittered)."""
    return variants[rows, np.random.randint(variants.shape[1], size=len(rows))]


def flip_condition(condition_idx: int) -> int:
    """Condition index after a horizontal flip of its crop (left <-> right on axial crops)."""
    return FLIPPED_CONDITION[int(condition_idx)]


class CropDataset(Dataset):
    """Items: image (S, P, P) float32 in [0, 1], condition, level, label (-1 when unknown), row."""

    def __init__(self, crops: np.ndarray, index: pd.DataFrame, transform: A.Compose | None,
                 variants: np.ndarray | None = None):
        """transform None serves the raw stored crop (with its margin, 8-bit) for augmentation on the device.
        variants: (rows, V) crop numbers of each row's variants (crops.jittered); each item draws one."""
        self.crops = crops
        self.index = index.reset_index(drop=True)
        self.transform = transform
        self._variants = variants
        self._fixed = self.index["crop"].to_numpy()
        self._cond = self.index["condition_idx"].to_numpy()
        self._level = self.index["level_idx"].to_numpy()
        labels = self.index["label"].to_numpy(dtype=float) if "label" in self.index else np.full(len(self.index), np.nan)
        self._label = np.where(np.isnan(labels), -1, labels).astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def _crop(self, rows: np.ndarray) -> np.ndarray:
        """The crop numbers served for these rows: a random variant of each when there are variants."""
        return self._fixed[rows] if self._variants is None else draw_variants(self._variants, rows)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A whole batch at once (DataLoader calls this when it exists). Raw crops (no transform) are read in
        one sorted memmap access and stay 8-bit: the device converts them, the loader only copies."""
        if self.transform is not None:
            return [self[i] for i in indices]
        idx = np.asarray(indices)
        crop = self._crop(idx)
        order = np.argsort(crop, kind="stable")
        images = np.empty((len(idx), *self.crops.shape[1:]), dtype=self.crops.dtype)
        images[order] = self.crops[crop[order]]
        return [{"image": torch.from_numpy(images[k]), "condition": torch.tensor(int(self._cond[i])),
                 "level": torch.tensor(int(self._level[i])), "label": torch.tensor(int(self._label[i])),
                 "row": torch.tensor(int(i))} for k, i in enumerate(idx)]

    def __getitem__(self, i: int) -> dict:
        if self.transform is None:
            return self.__getitems__([i])[0]
        stack = to_unit(self.crops[self._crop(np.array([i]))[0]])  # (S, P, P) in [0, 1]
        out = self.transform(image=np.ascontiguousarray(stack.transpose(1, 2, 0)))  # HWC, slices as channels
        condition = flip_condition(self._cond[i]) if was_flipped(out) else int(self._cond[i])
        image = out["image"]
        stack = (image[..., None] if image.ndim == 2 else image).transpose(2, 0, 1)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(stack)),
            "condition": torch.tensor(condition),
            "level": torch.tensor(int(self._level[i])),
            "label": torch.tensor(int(self._label[i])),
            "row": torch.tensor(i),
        }
