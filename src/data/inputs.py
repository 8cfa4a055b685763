"""What every training task starts from: the decoded series, the folds, the labels and the coordinates."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core import config as config_lib
from ..core.paths import cache_dir_for
from .cache import prepare
from .folds import check_fold, ensure_folds, load_folds
from .tables import load_coordinates, load_train


def check_tables(cfg: dict) -> None:
    """What every task checks before any work: each file the config names (ConfigError naming the key), the
    folds file and the fold id (DataError)."""
    config_lib.check_inputs(cfg)
    check_fold(Path(cfg["data_dir"]) / "train.csv", Path(cfg["folds"]), cfg["fold"])


def prepare_tables(cfg: dict) -> None:
    """What every task's prepare writes first: the series not decoded yet (a no-op once prepare.py has run)
    and, when the folds file does not exist yet, the default folds."""
    data_dir = Path(cfg["data_dir"])
    prepare(data_dir, cache_dir_for(data_dir, cfg.get("cache_dir")), "train", workers=cfg["workers"])
    ensure_folds(cfg["folds"], load_train(data_dir / "train.csv"))


def read_tables(cfg: dict) -> tuple[Path, Path, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """What every task reads: data and cache folders, train labels, folds and the coordinates (cfg['coords']
    or the data's train_label_coordinates.csv)."""
    data_dir = Path(cfg["data_dir"])
    train = load_train(data_dir / "train.csv")
    folds = load_folds(cfg["folds"])
    coords = load_coordinates(Path(cfg["coords"]) if cfg.get("coords") else data_dir / "train_label_coordinates.csv")
    return data_dir, cache_dir_for(data_dir, cfg.get("cache_dir")), train, folds, coords
