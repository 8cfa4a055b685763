"""Test fixtures that more than one test module (and bench.py's timings) use."""
from __future__ import annotations

from pathlib import Path

import torch

import src.registry  # noqa: F401 - every model registered
from src.core import config as config_lib
from src.core.atomic import save_torch
from src.core.registry import build_model
from src.core.run_folders import BEST, CONFIG, localizer_run, run_dir
from src.localizer.plan import PLAN


def random_runs(root: str | Path, preset: str | None = "tiny", folds: tuple[int, ...] = (0,), classifiers: bool = True,
                overrides: dict[str, dict] | None = None, experiments: tuple[str, ...] = (), seed: int = 0) -> Path:
    """Untrained (random-weight) runs with real configs, for tests and timing, never for scores: every series
    type's localizer and (with classifiers) both classifiers, each fold of `folds`. overrides: config overrides
    of the 'localizer' and of the 'classifier' runs; experiments are more attn_resnext runs under these names
    (as `train.py --name NAME` writes them)."""
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
