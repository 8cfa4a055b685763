"""Augmentation (albumentations): the attention paper's list, one draw per crop for all of its slices."""
from __future__ import annotations

import albumentations as A
import cv2


def train_transform(aug: dict, size_px: int) -> A.Compose:
    """Rotation +-10 deg, translation +-10%, scale 0.8-1.0, horizontal flip, Gaussian noise sigma 0.01-0.05,
    then the centre crop to size_px. Slices are channels, so every slice gets the same geometric draw."""
    return A.Compose(
        [
            A.Affine(
                rotate=(-aug["rotate"], aug["rotate"]),
                translate_percent=(-aug["translate"], aug["translate"]),
                scale=tuple(aug["scale"]),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=aug["affine_p"],
            ),
            A.HorizontalFlip(p=aug["hflip"]),
            A.GaussNoise(std_range=tuple(aug["noise_std"]), p=aug["noise_p"]),
            A.CenterCrop(size_px, size_px),
        ],
        strict=True,
        save_applied_params=True,  # the dataset must know whether a crop was flipped
    )


def eval_transform(size_px: int) -> A.Compose:
    """Centre crop only."""
    return A.Compose([A.CenterCrop(size_px, size_px)], strict=True, save_applied_params=True)


def was_flipped(result: dict) -> bool:
    """Whether an albumentations result applied a horizontal flip."""
    return any(name == "HorizontalFlip" for name, _ in result.get("applied_transforms", []))
