"""Every Task, registered (core.registry.register_task): what train.py hands the generic train loop for a
config's `task`. Training needs these; inference never imports them, so the Kaggle package ships no training
code.
"""
from __future__ import annotations

from . import registry  # noqa: F401 - every model, first
from .classifier import study, task  # noqa: F401 - ClassifierTask, StudyTask
from .core.registry import task_class  # noqa: F401
from .localizer import task as localizer_task  # noqa: F401 - LocalizerTask
