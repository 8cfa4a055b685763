"""Every model, registered: importing this module imports each module that registers a model
(core.registry.register_model), so the scripts see them all, as `import timm` does for timm's models. Adding a
model is one registration beside its builder, and one import here if it lives in a new module. The scripts
read the registry after importing this module, so they never see a half-filled one (core.registry refuses to
be read before). The Task classes that train the models are registered by src/tasks.py, which train.py
imports; inference needs the models alone.
"""
from __future__ import annotations

from pathlib import Path

from .classifier import models  # noqa: F401 - the per-crop classifiers and the study-level model
from .core import config as config_lib
from .core.registry import build_model, mark_complete, model_names  # noqa: F401
from .localizer import net  # noqa: F401 - the localizer's network
from .localizer.plan import PLAN


def recipe_parts(config_file: str | Path | None) -> list[tuple[str, str | None]]:
    """Every run a recipe trains, in order: (model, None), and (localizer, series type) for each series type."""
    return [(model, series_type) for model in config_lib.pipeline_models(config_file)
            for series_type in ([p.series_type for p in PLAN] if model == "localizer" else [None])]


mark_complete()
