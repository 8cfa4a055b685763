"""Tasks by name (the config's `task`): what train.py hands the generic loop."""
from __future__ import annotations

from pathlib import Path

from . import config as config_lib
from ..classifier.study import StudyTask
from ..classifier.task import ClassifierTask
from ..localizer.plan import PLAN
from ..localizer.task import LocalizerTask
from .task import Task

TASKS: dict[str, type[Task]] = {"classifier": ClassifierTask, "localizer": LocalizerTask, "study": StudyTask}


def recipe_parts(config_file: str | Path | None) -> list[tuple[str, str | None]]:
    """Every run a recipe trains, in order: (model, None), and (localizer, series type) for each series type."""
    return [(model, series_type) for model in config_lib.pipeline_models(config_file)
            for series_type in ([p.series_type for p in PLAN] if model == "localizer" else [None])]
