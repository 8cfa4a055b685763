"""The contract between the generic train loop (engine.fit) and what it trains.

A task is built from the config and the device without side effects; `check` then refuses bad inputs before
any work, `build_model` gives the model the config names, `prepare` writes the caches it reads (decoded
series, folds, crops; the main process only, once), and `load` reads them (every process). The loop calls
nothing else, so a new stage is a class with these members, registered for its task name
(core.registry.register_task).
"""
from __future__ import annotations

from typing import Protocol

import pandas as pd
import torch
from torch.utils.data import Dataset


class Task(Protocol):
    """What engine.fit trains: data, loss and validation numbers."""

    # The validation metrics each epoch's log line prints. evaluate's `score` is the task's primary metric,
    # the one the best epoch is chosen by (lower is better): the competition metric for the classifiers, the
    # mean 3D error in mm for the localizer.
    shown: tuple[str, ...]
    # Whether the training loader does per-item work (augmentation, decoding) worth loader processes on the CPU
    # device; false where it only gathers prepared arrays: engine.fit then loads in the training process.
    loader_work: bool

    def __init__(self, cfg: dict, device: torch.device) -> None: ...

    def check(self) -> None:
        """Before any work: every input the task will read is there and valid (an error naming it)."""

    def build_model(self) -> torch.nn.Module:
        """The model the config names, untrained (its registered builder)."""

    def prepare(self) -> None:
        """Write every cache and file the task reads (main process only, before load)."""

    def load(self) -> None:
        """Read what prepare wrote: tables, splits, datasets."""

    def train_dataset(self) -> Dataset: ...

    def val_dataset(self) -> Dataset: ...

    def to_device(self, batch: dict, device: torch.device, train: bool) -> dict[str, torch.Tensor]:
        """The model's keyword inputs of a batch, on the device (augmented there when training, if the task does)."""

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor: ...

    def evaluate(self, outputs: torch.Tensor, rows: torch.Tensor) -> tuple[dict, pd.DataFrame]:
        """Validation metrics (val_loss, score and the shown ones) and the out-of-fold frame."""

    def references(self) -> dict[str, float]:
        """Reference scores on the validation split (e.g. the constant prior); may be empty."""
