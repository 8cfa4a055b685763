"""The runs/ layout, in one place: runs/{name}/fold{N}/ with config.yaml, best.pt, last.pt, oof.csv, log.csv,
and runs/ensemble.json. Finding runs, telling classifiers from localizers and rebuilding a trained model all
go through here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import config as config_lib
from .models import build_model

CONFIG, BEST, LAST, OOF, LOG = "config.yaml", "best.pt", "last.pt", "oof.csv", "log.csv"
ENSEMBLE = "ensemble.json"
# What inference needs of a run folder (the Kaggle dataset ships these and nothing else).
INFERENCE_FILES = (CONFIG, BEST)


def run_dir(runs: str | Path, name: str, fold: int) -> Path:
    """The folder of one fold of one run."""
    return Path(runs) / name / f"fold{int(fold)}"


def fold_of(run: Path) -> int:
    """Fold number of a run folder ('fold3' -> 3)."""
    return int(Path(run).name[len("fold"):])


def ensemble_file(runs: str | Path) -> Path:
    return Path(runs) / ENSEMBLE


def trained_folds(runs: str | Path, name: str, folds: list[int] | None = None) -> list[Path]:
    """Fold folders runs/{name}/fold*/ holding best.pt and config.yaml (all folds, or those listed), by fold."""
    found = [p for p in (Path(runs) / name).glob("fold*")
             if p.name[len("fold"):].isdigit() and (p / BEST).is_file() and (p / CONFIG).is_file()]
    if folds is not None:
        found = [p for p in found if fold_of(p) in set(folds)]
    return sorted(found, key=fold_of)


def read_config(run: Path) -> dict:
    """The resolved config a run was trained with."""
    return config_lib.load(Path(run) / CONFIG)


def run_names(runs: str | Path, task: str, model: str | None = None) -> list[str]:
    """Names of the runs under runs/ with at least one trained fold of this task (and model, if given), sorted."""
    names = []
    for folder in sorted(p for p in Path(runs).glob("*") if p.is_dir()):
        trained = trained_folds(runs, folder.name)
        if trained:
            cfg = read_config(trained[0])
            if cfg.get("task") == task and model in (None, cfg.get("model")):
                names.append(folder.name)
    return names


def classifier_runs(runs: str | Path, model: str | None = None) -> list[str]:
    """Every trained classifier run (any `train.py --name`; of one model if given)."""
    return run_names(runs, "classifier", model)


def is_run_name(runs: str | Path, name: str) -> bool:
    """Whether `name` is a run folder directly inside runs/ (no path, no '..'): names read from files such as
    ensemble.json are checked with this before anything is loaded from them."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name \
        and "/" not in name and "\\" not in name and (Path(runs) / name).is_dir()


def localizer_run(series_key: str) -> str:
    """Run name of the localizer of one series type (localizer_sagittal_t2, ...)."""
    return f"localizer_{series_key}"


def load_model(run: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model of a run folder, rebuilt from its config.yaml with its best weights, in eval mode."""
    cfg = read_config(run)
    cfg["pretrained"] = None  # the trained weights replace any backbone initialisation
    model = build_model(cfg)
    state = torch.load(Path(run) / BEST, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def random_runs(root: str | Path, preset: str | None = "tiny", folds: tuple[int, ...] = (0,), classifiers: bool = True,
                localizer: dict | None = None, classifier: dict | None = None, experiments: tuple[str, ...] = (),
                seed: int = 0) -> Path:
    """Untrained (random-weight) runs with real configs, for tests and timing, never for scores: every series
    type's localizer and (with classifiers) both classifiers, each fold of `folds`. localizer and classifier
    are config overrides for each kind; experiments are more attn_resnext runs under these names (as
    `train.py --name NAME` writes them)."""
    from .atomic import save_torch
    from .localizer.plan import PLAN

    jobs = [("localizer", {**(localizer or {}), "series_type": p.key, "name": localizer_run(p.key)}) for p in PLAN]
    if classifiers:
        jobs += [(m, dict(classifier or {})) for m in ("attn_resnext", "cnn_lstm")]
    jobs += [("attn_resnext", {**(classifier or {}), "name": n}) for n in experiments]
    for model, overrides in jobs:
        for fold in folds:
            cfg = config_lib.resolve(model, preset, None, {**overrides, "fold": fold, "runs": str(root)})
            folder = run_dir(root, cfg["name"], fold)
            folder.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(seed + fold)
            config_lib.save(cfg, folder / CONFIG)
            save_torch({"model": build_model(cfg).state_dict()}, folder / BEST)
    return Path(root)
