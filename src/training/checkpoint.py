"""Trained models back from their run folders: each rebuilt by its registered builder from the run's
config.yaml, with best.pt's weights; what inference (localizer.infer, inference.members) and the explanations
load."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.device import place_model
from ..core.progress import first_line
from ..core.registry import build_model
from ..core.run_folders import BEST, RunFileError, fold_of, read_config, trained_folds


def load_model(run: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model of a run folder, rebuilt from its config.yaml with its best weights, in eval mode."""
    cfg = read_config(run)
    cfg["pretrained"] = None  # the trained weights replace any backbone initialisation
    if isinstance(cfg.get("study"), dict):
        cfg["study"] = {**cfg["study"], "init_from": None}  # and a study model's warm start
    model = build_model(cfg)
    path = Path(run) / BEST
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    except Exception as err:  # noqa: BLE001 - named with its file, the caller drops the fold
        raise RunFileError(f"{path}: does not load ({first_line(err)})") from None
    return place_model(model, device, cfg["channels_last"]).eval(), cfg


def load_fold_models(runs: str | Path, name: str, device: torch.device, faults,
                     folds: list[int] | None = None) -> list[tuple[Path, torch.nn.Module, dict]]:
    """(run folder, model, config) of every trained fold (or those listed) of one run that loads; a fold that
    does not load is named in `faults` (unit 'fold') and dropped, the others carry on."""
    loaded = []
    for run in trained_folds(runs, name, folds):
        try:
            model, cfg = load_model(run, device)
        except Exception as err:  # noqa: BLE001 - a bad config or checkpoint costs its fold only
            faults.add("fold", f"{name} fold {fold_of(run)}", f"{load_error(run, err)}; fold dropped")
            continue
        loaded.append((run, model, cfg))
    return loaded


def load_error(run: Path, err: BaseException) -> str:
    """Why a fold folder did not load, in one line naming the file (load_model's RunFileError says it)."""
    return str(err) if isinstance(err, RunFileError) else f"{run}: does not load ({first_line(err)})"
