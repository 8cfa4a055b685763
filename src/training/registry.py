"""Tasks by name (the config's `task`): what train.py hands the generic loop."""
from __future__ import annotations

from ..classifier.study import StudyTask
from ..classifier.task import ClassifierTask
from ..localizer.task import LocalizerTask
from .task import Task

TASKS: dict[str, type[Task]] = {"classifier": ClassifierTask, "localizer": LocalizerTask, "study": StudyTask}
