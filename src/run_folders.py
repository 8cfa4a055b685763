"""The runs/ layout, in one place: runs/{name}/fold{N}/ with config.yaml, best.pt, last.pt, oof.csv, log.csv,
done.json, and runs/ensemble.json. Finding runs, telling classifiers from localizers and rebuilding a trained model all
go through here.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import yaml

from .progress import first_line
from .training import config as config_lib
from .classifier.models import build_model

CONFIG, BEST, LAST, OOF, LOG = "config.yaml", "best.pt", "last.pt", "oof.csv", "log.csv"
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
    """The resolved config a run was trained with; RunFileError naming config.yaml when it cannot be read,
    does not parse, is not a mapping or names a key the config does not know."""
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
    return cfg


def run_names(runs: str | Path, task: str | tuple[str, ...], model: str | None = None, faults=None) -> list[str]:
    """Names of the runs under runs/ with at least one trained fold of this task (and model, if given), sorted.

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
        if cfg.get("task") in ((task,) if isinstance(task, str) else task) and model in (None, cfg.get("model")):
            names.append(folder.name)
    return names


def _skipped(faults, name: str, reason: str) -> None:
    if faults is not None:
        faults.add("member", name, reason)
    else:
        warnings.warn(f"{name}: {reason}", stacklevel=3)


# Tasks whose runs predict severities (ensemble members): per crop, or per study (src/study.py).
CLASSIFIER_TASKS = ("classifier", "study")


def classifier_runs(runs: str | Path, model: str | None = None, faults=None) -> list[str]:
    """Every trained classifier run, per-crop or study-level (any `train.py --name`; of one model if given)."""
    return run_names(runs, CLASSIFIER_TASKS, model, faults)


def is_run_name(runs: str | Path, name: str) -> bool:
    """Whether `name` is a run folder directly inside runs/ (no path, no '..'): names read from files such as
    ensemble.json are checked with this before anything is loaded from them."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name \
        and "/" not in name and "\\" not in name and (Path(runs) / name).is_dir()


def localizer_run(series_type: str) -> str:
    """Run name of the localizer of one series type (localizer_sagittal_t2, ...)."""
    return f"localizer_{series_type}"


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
    return model.to(device).eval(), cfg


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


def random_runs(root: str | Path, preset: str | None = "tiny", folds: tuple[int, ...] = (0,), classifiers: bool = True,
                overrides: dict[str, dict] | None = None, experiments: tuple[str, ...] = (), seed: int = 0) -> Path:
    """Untrained (random-weight) runs with real configs, for tests and timing, never for scores: every series
    type's localizer and (with classifiers) both classifiers, each fold of `folds`. overrides: config overrides
    of the 'localizer' and of the 'classifier' runs; experiments are more attn_resnext runs under these names
    (as `train.py --name NAME` writes them)."""
    from .atomic import save_torch
    from .localizer.plan import PLAN

    localizer, classifier = (overrides or {}).get("localizer", {}), (overrides or {}).get("classifier", {})
    jobs = [("localizer", {**localizer, "series_type": p.series_type, "name": localizer_run(p.series_type)}) for p in PLAN]
    if classifiers:
        jobs += [(m, dict(classifier)) for m in ("attn_resnext", "cnn_lstm")]
    jobs += [("attn_resnext", {**classifier, "name": n}) for n in experiments]
    for model, overrides in jobs:
        for fold in folds:
            cfg = config_lib.resolve(model, preset, None, {**overrides, "fold": fold, "runs": str(root)})
            folder = run_dir(root, cfg["name"], fold)
            folder.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(seed + fold)
            config_lib.save(cfg, folder / CONFIG)
            save_torch({"model": build_model(cfg).state_dict()}, folder / BEST)
    return Path(root)
