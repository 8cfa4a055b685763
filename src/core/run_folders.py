"""The runs/ layout, in one place: runs/{name}/fold{N}/ with config.yaml, best.pt, last.pt, oof.csv,
oof_predicted.csv, log.csv, done.json, and runs/ensemble.json. Finding runs and telling ensemble members from
localizers (by their model's registration, core.registry) go through here; training.checkpoint rebuilds a
trained model from its folder.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import yaml

from . import config as config_lib
from . import registry
from .progress import first_line

CONFIG, BEST, LAST, OOF, LOG = "config.yaml", "best.pt", "last.pt", "oof.csv", "log.csv"
# A classifier fold's held-out predictions from crops at the points its fold's localizers predict, with the
# test-time augmentation: what inference sees (evaluate_localization.py writes it beside oof.csv).
OOF_PREDICTED = "oof_predicted.csv"
DONE = "done.json"  # written when a training run ends: rerunning the same command then does nothing
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


class RunFileError(ValueError):
    """A file of a run folder that cannot be used; the message names the file and the first line of why."""


def read_config(run: Path) -> dict:
    """The resolved config a run was trained with (keys added since at their defaults: config.with_new_keys);
    RunFileError naming config.yaml when it cannot be read, does not parse, is not a mapping or names a key the
    config does not know."""
    path = Path(run) / CONFIG
    try:
        cfg = config_lib.load(path)
        if not isinstance(cfg, dict):
            raise RunFileError(f"{path}: not a mapping of config keys")
        config_lib.check_saved(cfg, str(path))
    except RunFileError:
        raise
    except config_lib.ConfigError as err:
        raise RunFileError(str(err)) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunFileError(f"{path}: does not read ({first_line(err)})") from None
    return config_lib.with_new_keys(cfg)


def run_names(runs: str | Path, keep: Callable[[dict], bool], faults=None) -> list[str]:
    """Names of the runs under runs/ with at least one trained fold whose config `keep` accepts, sorted.

    A run is told by the first of its folds whose config.yaml reads (the others are dropped where they are
    loaded); a run folder none of whose configs reads, or that cannot be listed, is skipped and named in
    `faults` (a FaultLog) or warned."""
    names = []
    for folder in sorted(p for p in Path(runs).glob("*") if p.is_dir()):
        try:
            trained = trained_folds(runs, folder.name)
        except OSError as err:
            _skipped(faults, folder.name, f"{folder}: cannot be listed ({first_line(err)}); run skipped")
            continue
        cfg, errors = None, []
        for run in trained:
            try:
                cfg = read_config(run)
                break
            except RunFileError as err:
                errors.append(str(err))
        if cfg is None:
            if errors:
                _skipped(faults, folder.name, f"no fold's {CONFIG} reads ({errors[0]}); run skipped")
            continue
        if keep(cfg):
            names.append(folder.name)
    return names


def _skipped(faults, name: str, reason: str) -> None:
    if faults is not None:
        faults.add("member", name, reason)
    else:
        warnings.warn(f"{name}: {reason}", stacklevel=3)


def classifier_runs(runs: str | Path, model: str | None = None, faults=None) -> list[str]:
    """Every trained ensemble member's run, per-crop or study-level (any `train.py --name`; of one model if
    given): a run whose model is registered as a member."""
    return run_names(runs, lambda cfg: registry.is_member(cfg) and model in (None, cfg.get("model")), faults)


def is_run_name(runs: str | Path, name: str) -> bool:
    """Whether `name` is a run folder directly inside runs/ (no path, no '..'): names read from files such as
    ensemble.json are checked with this before anything is loaded from them."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name \
        and "/" not in name and "\\" not in name and (Path(runs) / name).is_dir()


def localizer_run(series_type: str) -> str:
    """Run name of the localizer of one series type (localizer_sagittal_t2, ...)."""
    return f"localizer_{series_type}"


