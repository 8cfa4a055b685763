"""Rebuilding trained models from their run folders, and running them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from . import config as config_lib
from .augment import eval_transform
from .constants import TARGETS
from .datasets import CropDataset, flip_condition
from .models import autocast, build_model


def find_runs(runs: Path, name: str, folds: list[int] | None = None) -> list[Path]:
    """Fold folders runs/{name}/fold*/ holding a best.pt (all folds, or those listed)."""
    found = sorted(p for p in (Path(runs) / name).glob("fold*") if (p / "best.pt").is_file())
    if folds is not None:
        found = [p for p in found if int(p.name[4:]) in set(folds)]
    return found


def classifier_runs(runs: Path, model: str | None = None) -> list[str]:
    """Names of the run folders under runs/ holding trained classifiers (any --name; of one model if given), sorted."""
    names = []
    for folder in sorted(p for p in Path(runs).glob("*") if p.is_dir()):
        trained = [d for d in find_runs(runs, folder.name) if (d / "config.yaml").is_file()]
        if not trained:
            continue
        cfg = config_lib.load(trained[0] / "config.yaml")
        if cfg.get("task", "classify") == "classify" and model in (None, cfg.get("model")):
            names.append(folder.name)
    return names


def load_model(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model of a run folder, rebuilt from its config.yaml with its best weights, in eval mode."""
    cfg = config_lib.load(Path(run_dir) / "config.yaml")
    cfg["pretrained"] = None  # the trained weights replace any backbone initialisation
    model = build_model(cfg)
    state = torch.load(Path(run_dir) / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict_crops(model: torch.nn.Module, cfg: dict, crops: np.ndarray, index: pd.DataFrame, device: torch.device,
                  batch_size: int = 64, hflip_tta: bool = False) -> pd.DataFrame:
    """Severity probabilities (row_id + TARGETS) of a classifier for every crop of an index table.

    hflip_tta averages with the horizontally flipped crop, shown to the model with its mirrored condition
    where the flip swaps sides (axial crops), exactly as in training augmentation.
    """
    size = cfg["crop"]["size_px"]
    loader = DataLoader(CropDataset(crops, index, eval_transform(size)), batch_size=batch_size, shuffle=False)
    amp = torch.bfloat16 if device.type == "cuda" else None
    probs = []
    for batch in loader:
        image = batch["image"].to(device)
        condition, level = batch["condition"].to(device), batch["level"].to(device)
        views = [(image, condition)]
        if hflip_tta:
            flipped = torch.tensor([flip_condition(int(c)) for c in batch["condition"]], device=device)
            views.append((image.flip(-1), flipped))
        p = 0
        for img, cond in views:
            with autocast(device, amp):
                p = p + torch.softmax(model(img, cond, level).float(), 1)
        probs.append((p / len(views)).cpu().numpy())
    out = pd.DataFrame(np.concatenate(probs) if probs else np.zeros((0, 3)), columns=list(TARGETS))
    out.insert(0, "row_id", index["row_id"].to_numpy())
    return out
