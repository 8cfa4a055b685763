"""Where inference reads and writes and how: one object every stage of the offline pipeline takes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.device import pick_device
from ..core.faults import FaultLog


@dataclass
class InferenceContext:
    """The data, runs and cache of a prediction, its device and batch sizes, its outputs and its fault log.

    out: the submission file (None where nothing is written, e.g. scoring crops of the train split);
    per_model: also write each model's own submission beside out.
    """

    data_dir: Path
    runs: Path
    cache_dir: Path
    split: str = "test"
    out: Path | None = None
    device: torch.device = field(default_factory=pick_device)
    workers: int = 2  # loader processes that decode and cut ahead of the models
    studies_per_batch: int = 8  # studies per batch through the models (localize, classify)
    tta: bool = True  # average each crop with its horizontal flip
    test_views: bool = True  # read points on the other series the members' test_views name (classify.with_views)
    ensemble_path: Path | None = None  # default: runs/ensemble.json
    per_model: bool = False
    faults: FaultLog = field(default_factory=FaultLog)
    points: Path | None = None  # crops cut at this table's points (e.g. the labelled ones) instead of localizing
    slice_sd_mm: float | None = None  # a point's depth spread across its slices (localizer.decode.Search); None: its default

    def __post_init__(self) -> None:
        self.data_dir, self.runs, self.cache_dir = Path(self.data_dir), Path(self.runs), Path(self.cache_dir)
        self.out = Path(self.out) if self.out is not None else None
