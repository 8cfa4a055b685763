"""Rebuilding trained models from their run folders, and running them."""
from __future__ import annotations

from pathlib import Path

import torch

from . import config as config_lib
from .models import build_model


def find_runs(runs: Path, name: str, folds: list[int] | None = None) -> list[Path]:
    """Fold folders runs/{name}/fold*/ holding a best.pt (all folds, or those listed)."""
    found = sorted(p for p in (Path(runs) / name).glob("fold*") if (p / "best.pt").is_file())
    if folds is not None:
        found = [p for p in found if int(p.name[4:]) in set(folds)]
    return found


def load_model(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model of a run folder, rebuilt from its config.yaml with its best weights, in eval mode."""
    cfg = config_lib.load(Path(run_dir) / "config.yaml")
    cfg["pretrained"] = None  # the trained weights replace any backbone initialisation
    model = build_model(cfg)
    state = torch.load(Path(run_dir) / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
