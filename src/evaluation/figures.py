"""Figures without pyplot's global state: a Figure with its axes, saved atomically (no backend is chosen
at import, so importing a module that draws changes nothing for its importer)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..core.atomic import atomic_path


def figure(rows: int, cols: int, figsize: tuple[float, float], **subplots: Any) -> tuple[Figure, Any]:
    """A figure and its grid of axes (as Figure.subplots returns them)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **subplots)


def save_figure(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    """fig.savefig(path), atomically; the format is the file's suffix."""
    path = Path(path)
    with atomic_path(path, path.suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path
