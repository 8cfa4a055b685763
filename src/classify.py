"""Running trained classifiers over crops: severity probabilities per row, every fold, flip TTA."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from .augment import FLIPPED_CONDITION, eval_transform
from .constants import TARGETS
from .crops import CropSpec, build_crops
from .datasets import CropDataset
from .device import autocast, inference_dtype
from .faults import FaultLog
from .run_folders import fold_of, load_model, trained_folds


@torch.no_grad()
def crop_probabilities(model: torch.nn.Module, cfg: dict, crops: np.ndarray, index: pd.DataFrame, device: torch.device,
                       batch_size: int = 64, hflip_tta: bool = False) -> pd.DataFrame:
    """Severity probabilities (row_id + TARGETS) of a classifier for every crop of an index table.

    hflip_tta averages with the horizontally flipped crop, shown to the model with its mirrored condition
    where the flip swaps sides (axial crops), exactly as in training augmentation.
    """
    loader = DataLoader(CropDataset(crops, index, eval_transform(cfg["crop"]["size_px"])), batch_size=batch_size,
                        shuffle=False)
    dtype = inference_dtype(device)
    mirrored = torch.tensor(FLIPPED_CONDITION, device=device)
    probs = []
    for batch in loader:
        image = batch["image"].to(device)
        condition, level = batch["condition"].to(device), batch["level"].to(device)
        views = [(image, condition)]
        if hflip_tta:
            views.append((image.flip(-1), mirrored[condition]))
        p = 0
        for img, cond in views:
            with autocast(device, dtype):
                p = p + torch.softmax(model(img, cond, level).float(), 1)
        probs.append((p / len(views)).cpu().numpy())
    out = pd.DataFrame(np.concatenate(probs) if probs else np.zeros((0, 3)), columns=list(TARGETS))
    out.insert(0, "row_id", index["row_id"].to_numpy())
    return out


def run_classifiers(coords: pd.DataFrame, runs: Path, names: list[str], cache_dir: Path, split: str,
                    device: torch.device, tta: bool = True, workers: int = 2,
                    faults: FaultLog | None = None) -> dict[str, pd.DataFrame]:
    """Per classifier run: its folds' mean crop probabilities, for the rows with a crop at `coords`.

    A fold that fails (its checkpoint does not load, or it cannot predict) is dropped and the run's other
    folds carry on; a run left without any fold is dropped from the ensemble. Each is named in `faults`.
    """
    faults = faults if faults is not None else FaultLog()
    out: dict[str, pd.DataFrame] = {}
    for name in names:
        fold_preds = []
        runs_of = trained_folds(runs, name)
        for run in runs_of:
            try:
                model, cfg = load_model(run, device)
                crops, index = build_crops(coords, cache_dir, split, CropSpec(**cfg["crop"]), Path(cache_dir) / "crops",
                                           workers)
                if len(index):
                    fold_preds.append(crop_probabilities(model, cfg, crops, index, device, hflip_tta=tta).set_index("row_id"))
            except Exception as err:  # noqa: BLE001 - a bad fold costs that fold only
                faults.add("fold", f"{name} fold {fold_of(run)}", f"dropped ({type(err).__name__}: {str(err)[:200]})")
        if fold_preds:
            out[name] = (sum(fold_preds) / len(fold_preds)).reset_index()
        else:
            faults.add("member", name, "no trained fold under " + str(runs) if not runs_of else "every fold failed; "
                       "member dropped, the ensemble renormalises over the others")
    return out
