"""Models by name, in the manner of timm's register_model: one registration names a model's builder, its task
and its config defaults, and whether its runs are ensemble members.

The builders are registered where they are defined (classifier/models.py, localizer/net.py), the Task
classes where theirs are (classifier/task.py, classifier/study.py, localizer/task.py); src/registry.py imports
every module that registers a model (src/tasks.py every task), so a script that imports it sees every
model. Everything that needs a model by name reads this table: the config's model defaults (core.config), the
runs listing (core.run_folders), training (the engine builds the task's model) and inference's member loading.
It imports no stage, so every layer may read it; reading it before src.registry has been imported is an
error (NotRegistered), never a silently shorter list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


class UnknownModel(KeyError):
    """A model name no module has registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: build(cfg) -> nn.Module; task: the config's `task` (which Task trains it);
    defaults: its config overrides of core.config.DEFAULTS; member: its runs predict severities (the ensemble's
    members), unlike the localizer's."""

    name: str
    build: Callable[[dict], Any]
    task: str
    defaults: dict = field(default_factory=dict)
    member: bool = True


class NotRegistered(RuntimeError):
    """The registry was read before src.registry registered every model."""


_MODELS: dict[str, ModelEntry] = {}
_TASKS: dict[str, type] = {}
_complete = False


def mark_complete() -> None:
    """Called by src.registry once every module that registers a model has been imported."""
    global _complete
    _complete = True


def _models() -> dict[str, ModelEntry]:
    if not _complete:
        raise NotRegistered("the model registry was read before every model was registered: import src.registry "
                            "first (every script does)")
    return _MODELS


def register_model(name: str, *, task: str, defaults: dict | None = None, member: bool = True):
    """Decorator: register a builder (cfg -> nn.Module) under `name`; registering a name twice is an error."""
    def wrap(build: Callable[[dict], Any]) -> Callable[[dict], Any]:
        if name in _MODELS and _MODELS[name].build is not build:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = ModelEntry(name, build, task, dict(defaults or {}), member)
        return build
    return wrap


def register_task(name: str):
    """Class decorator: the Task class that trains every model registered with task=`name`."""
    def wrap(cls: type) -> type:
        _TASKS[name] = cls
        return cls
    return wrap


def model_names() -> list[str]:
    """Every registered model, sorted."""
    return sorted(_models())


def model_entry(name: str) -> ModelEntry:
    """The registration of one model (UnknownModel naming the known ones)."""
    if name not in _models():
        raise UnknownModel(f"unknown model '{name}'; known: {model_names()}")
    return _MODELS[name]


def task_names() -> list[str]:
    """The tasks the registered models name, sorted."""
    return sorted({e.task for e in _models().values()})


def task_class(name: str) -> type:
    """The Task class registered under `name`."""
    _models()
    if name not in _TASKS:
        raise UnknownModel(f"unknown task '{name}'; known: {sorted(_TASKS)} (src.tasks registers every one)")
    return _TASKS[name]


def is_member(cfg: dict) -> bool:
    """Whether a run with this config is an ensemble member (its model is registered as one)."""
    try:
        return model_entry(str(cfg.get("model"))).member
    except UnknownModel:
        return False


def build_model(cfg: dict) -> Any:
    """The model a config names, built by its registered builder."""
    return model_entry(cfg["model"]).build(cfg)
