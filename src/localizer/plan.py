"""The localizer's plan, derived from the constants: adding a series type or a condition is a change there.

Each part is one series type: the conditions annotated on it, and how its points are found. A searched
type (sagittal) is run on every slice with one heatmap channel per level plus one for every level; a
geometry-sliced type (axial) is run only on the slice that 3D geometry assigns to each level, with one
channel for every level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..core.constants import (
    CONDITION_SERIES,
    GEOMETRY_SLICED,
    LEVELS,
    LOCALIZER_ORDER,
    SERIES_TYPES,
    condition_side,
)


@dataclass(frozen=True)
class Part:
    """What the localizer does on one series type."""

    description: str  # the series description, e.g. 'Sagittal T2/STIR'
    series_type: str  # its name in configs and run folders, e.g. 'sagittal_t2'
    conditions: tuple[str, ...]  # the conditions annotated on this series type
    searched: bool  # True: every slice is searched, one channel per level; False: the slice comes from geometry
    levels: tuple[str, ...] = LEVELS

    @property
    def channel_names(self) -> tuple[str, ...]:
        """A searched type: one channel per level, then one for every level's points together (where the discs
        are, whichever they are); a geometry-sliced type: that one channel only."""
        return self.levels + ("every level",) if self.searched else ("every level",)

    @property
    def point_channels(self) -> int:
        """Channels that labelled points are drawn into; the last channel of a searched type is their maximum."""
        return len(self.levels) if self.searched else 1

    @property
    def any_channel(self) -> int:
        """The channel of every level's points together."""
        return self.channels - 1

    @property
    def channels(self) -> int:
        return len(self.channel_names)

    def channel(self, level: str) -> int:
        """Heatmap channel of a level's points."""
        return self.levels.index(level) if self.searched else 0

    def sides(self) -> dict[str, int]:
        """Each condition's side of the patient (+1 left, -1 right, 0 midline)."""
        return {c: condition_side(c) for c in self.conditions}


def build_plan(condition_series: Mapping[str, str] = CONDITION_SERIES, order: tuple[str, ...] = LOCALIZER_ORDER,
               names: Mapping[str, str] = SERIES_TYPES, geometry_sliced: frozenset[str] = GEOMETRY_SLICED,
               levels: tuple[str, ...] = LEVELS) -> tuple[Part, ...]:
    """The parts in the order localization uses them; every condition's series type must be in `order`."""
    unplanned = sorted({s for s in condition_series.values()} - set(order))
    if unplanned:
        raise ValueError(f"series types {unplanned} carry conditions but are not in the localizer's order")
    parts = []
    for description in order:
        conditions = tuple(c for c, s in condition_series.items() if s == description)
        if conditions:
            parts.append(Part(description, names[description], conditions, description not in geometry_sliced, levels))
    return tuple(parts)


PLAN: tuple[Part, ...] = build_plan()
PARTS: dict[str, Part] = {p.series_type: p for p in PLAN}


def part(series_type: str) -> Part:
    """The part of a series type ('sagittal_t2', ...)."""
    if series_type not in PARTS:
        raise ValueError(f"series_type must be one of {sorted(PARTS)}, not {series_type!r}")
    return PARTS[series_type]


STRIDE = 2  # the heatmaps are half the input resolution (HeatmapNet decodes to its stride-2 features)
