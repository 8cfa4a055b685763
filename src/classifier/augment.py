"""Augmentation: the attention paper's list (rotation +-10 deg, translation +-10%, scale 0.8-1.0, horizontal
flip, Gaussian noise sigma 0.01-0.05), one draw per crop for all of its slices, then the centre crop; an intensity
curve, contrast and brightness where the config asks (`aug.gamma`, `aug.contrast`, `aug.brightness`).

Two paths with the same draw distribution, chosen by the config's `aug.where`:
- `device` (and `auto`, the default): one batched transform on the training device (DeviceAugment:
  affine_grid + grid_sample), so the loader only gathers raw crops and the CPU never limits a GPU;
- `cpu`: albumentations per crop in the loader workers (train_transform).
A horizontal flip mirrors patient left and right on axial crops, so their condition becomes the mirrored
one (datasets.flip_condition); both paths report it.
"""
from __future__ import annotations

import math

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

from ..core.constants import FLIPPED_CONDITION
from ..data.cache import to_unit


def train_transform(aug: dict, size_px: int) -> A.Compose:
    """The CPU path: rotation, translation, scale, horizontal flip, Gaussian noise, then the centre crop to
    size_px. Slices are channels, so every slice gets the same geometric draw."""
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
            A.VerticalFlip(p=aug["vflip"]),
            *_intensity_transforms(aug),
            A.GaussNoise(std_range=tuple(aug["noise_std"]), p=aug["noise_p"]),
            A.CenterCrop(size_px, size_px),
        ],
        strict=True,
        save_applied_params=True,  # the dataset must know whether a crop was flipped
    )


def _intensity_on(aug: dict) -> tuple[bool, bool]:
    """Whether the config asks for the intensity curve, and for contrast or brightness."""
    lo, hi = aug["gamma"]
    return (lo, hi) != (1.0, 1.0), bool(aug["contrast"] or aug["brightness"])


def _intensity_transforms(aug: dict) -> list:
    """albumentations' RandomGamma and RandomBrightnessContrast where asked (none by default)."""
    gamma, linear = _intensity_on(aug)
    p = aug["intensity_p"]
    out = []
    if gamma:
        lo, hi = aug["gamma"]
        out.append(A.RandomGamma(gamma_limit=(100 * lo, 100 * hi), p=p))
    if linear:
        out.append(A.RandomBrightnessContrast(brightness_limit=aug["brightness"], contrast_limit=aug["contrast"], p=p))
    return out


def eval_transform(size_px: int) -> A.Compose:
    """Centre crop only."""
    return A.Compose([A.CenterCrop(size_px, size_px)], strict=True, save_applied_params=True)


def was_flipped(result: dict) -> bool:
    """Whether an albumentations result applied a horizontal flip."""
    return any(name == "HorizontalFlip" for name, _ in result.get("applied_transforms", []))


def use_device_path(aug: dict, device: torch.device) -> bool:
    """Whether augmentation runs batched on the training device: `device` and `auto` (on the GPU and the CPU
    alike: on the CPU demo's classifiers it was cheaper than albumentations in a loader process and scored
    better at each of three seeds, docs/BENCHMARKS.md); `cpu` keeps albumentations in the loader."""
    where = aug.get("where", "auto")
    if where not in ("auto", "cpu", "device"):
        raise ValueError(f"aug.where must be auto, cpu or device, not {where!r}")
    return where != "cpu"


class DeviceAugment:
    """The paper's augmentation for a batch of raw crops (B, S, P, P) with a margin, on their own device.

    Each crop gets one draw (the same for all of its slices): with probability affine_p a rotation, scale and
    translation, with probability hflip a horizontal flip, with probability noise_p Gaussian noise of a
    drawn sigma; then the centre size_px x size_px is sampled (bilinear, zeros outside), as albumentations
    does on the CPU path.
    """

    def __init__(self, aug: dict, size_px: int):
        self.aug, self.size_px = aug, size_px

    def draw(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Per-crop parameters: angle (degrees), scale, tx, ty (fractions of the crop), flip, vflip, noise sigma,
        gamma, alpha and beta (the intensity: x ** gamma * alpha + beta).

        Drawn from torch's global generator of the device, which the train loop seeds per epoch, so a resumed
        run draws what an uninterrupted one would have. The intensity is drawn only where asked, after the rest:
        without it the draws are those of the paper's list."""
        a = self.aug

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, device=device)

        def chance(p: float) -> torch.Tensor:
            return torch.rand(n, device=device) < p

        affine = chance(a["affine_p"])
        vflip = a["vflip"]  # drawn only when asked: without it the draws are those of the paper's list
        params = {"angle": uniform(-a["rotate"], a["rotate"]), "scale": uniform(*a["scale"]),
                  "tx": uniform(-a["translate"], a["translate"]), "ty": uniform(-a["translate"], a["translate"]),
                  "flip": chance(a["hflip"]),
                  "vflip": chance(vflip) if vflip > 0 else torch.zeros(n, dtype=torch.bool, device=device),
                  "sigma": uniform(*a["noise_std"]) * chance(a["noise_p"])}
        params["angle"] = params["angle"] * affine
        params["scale"] = torch.where(affine, params["scale"], torch.ones_like(params["scale"]))
        params["tx"], params["ty"] = params["tx"] * affine, params["ty"] * affine
        gamma, linear = _intensity_on(a)
        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        p = a["intensity_p"]
        params["gamma"] = torch.where(chance(p), uniform(*a["gamma"]), one) if gamma else one
        if linear:
            on = chance(p)
            params["alpha"] = torch.where(on, 1 + uniform(-a["contrast"], a["contrast"]), one)
            params["beta"] = torch.where(on, uniform(-a["brightness"], a["brightness"]), zero)
        else:
            params["alpha"], params["beta"] = one, zero
        return params

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Crops (B, S, P, P), 8-bit or float in [0, 1] -> float32 (B, S, size_px, size_px) with the given parameters
        (the intensity and the noise where the settings ask for them)."""
        b, s, h, w = images.shape
        if h != w:
            raise ValueError(f"crops must be square, got {h} x {w}")
        rad = params["angle"].float() * (math.pi / 180)
        cos, sin = torch.cos(rad), torch.sin(rad)
        r = self.size_px / w  # the centre crop, in the input's normalised coordinates
        flip = torch.where(params["flip"], -1.0, 1.0).to(images.device)
        vflip = torch.where(params["vflip"], -1.0, 1.0).to(images.device)
        inv = 1.0 / params["scale"].float()
        # Output point u (normalised over the crop) samples the input at S^-1 R^-1 (F r u - t): the image was
        # rotated by +angle (counter-clockwise as shown, y pointing down), scaled, translated, then flipped (F: -1 on x
        # for a horizontal flip, on y for a vertical one).
        theta = torch.zeros(b, 2, 3, device=images.device)
        theta[:, 0, 0] = inv * cos * flip * r
        theta[:, 0, 1] = -inv * sin * vflip * r
        theta[:, 1, 0] = inv * sin * flip * r
        theta[:, 1, 1] = inv * cos * vflip * r
        tx, ty = 2 * params["tx"].float(), 2 * params["ty"].float()  # fractions of the image -> normalised units
        theta[:, 0, 2] = -inv * (cos * tx - sin * ty)
        theta[:, 1, 2] = -inv * (sin * tx + cos * ty)
        grid = F.affine_grid(theta, (b, s, self.size_px, self.size_px), align_corners=False)
        unit = to_unit(images)  # 8-bit crops from the store
        out = F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Branches decided by the settings, never by the draws: a test on a device tensor would make the host
        # wait for the device every batch.
        if any(_intensity_on(self.aug)):
            view = lambda t: t.float().view(b, 1, 1, 1)  # noqa: E731
            out = (out.clamp(0.0, 1.0) ** view(params["gamma"]) * view(params["alpha"]) + view(params["beta"])).clamp(0.0, 1.0)
        sigma = params["sigma"].float().view(b, 1, 1, 1)
        if self.aug["noise_p"] > 0 and self.aug["noise_std"][1] > 0:
            noise = torch.randn(out.shape, device=images.device)
            out = (out + sigma * noise).clamp(0.0, 1.0)
        return out

    def __call__(self, images: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented crops and their conditions (mirrored where an axial crop was flipped)."""
        params = self.draw(len(images), images.device)
        table = torch.tensor(FLIPPED_CONDITION, device=condition.device)
        return self.apply(images, params), torch.where(params["flip"].to(condition.device), table[condition], condition)
