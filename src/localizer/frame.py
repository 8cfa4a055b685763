"""How a slice sits in the localizer's square input: resized to keep its physical aspect, centred, zero-padded.

A rectangular matrix, a rectangular field of view or anisotropic pixels would be squashed by a plain resize
to size x size, and the anatomy would look different from series to series. The frame scales both axes to
the same mm per input pixel instead; a square image with square pixels fills the input exactly as a plain
resize would.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..data.cache import to_unit
from ..data.dicom import Series
from .plan import STRIDE


@dataclass(frozen=True)
class Frame:
    """Image (h, w) resized to (new_h, new_w) and placed at (top, left) of a size x size input."""

    h: int
    w: int
    new_h: int
    new_w: int
    size: int
    mm_per_px: float  # input pixels are square: this many mm each

    @property
    def top(self) -> int:
        return (self.size - self.new_h) // 2

    @property
    def left(self) -> int:
        return (self.size - self.new_w) // 2

    def to_input(self, x, y):
        """Image pixel (x, y) -> input pixel (x, y); cv2's pixel-centre convention."""
        return ((np.asarray(x, float) + 0.5) * self.new_w / self.w - 0.5 + self.left,
                (np.asarray(y, float) + 0.5) * self.new_h / self.h - 0.5 + self.top)

    def to_image(self, x, y):
        """Input pixel (x, y) -> image pixel (x, y)."""
        return ((np.asarray(x, float) - self.left + 0.5) * self.w / self.new_w - 0.5,
                (np.asarray(y, float) - self.top + 0.5) * self.h / self.new_h - 0.5)

    def heat_to_image(self, yx: tuple[float, float]) -> tuple[float, float]:
        """Heatmap cell (y, x) (at STRIDE) -> image pixel (x, y)."""
        x, y = self.to_image((yx[1] + 0.5) * STRIDE - 0.5, (yx[0] + 0.5) * STRIDE - 0.5)
        return float(x), float(y)

    @property
    def mm_per_cell(self) -> float:
        return self.mm_per_px * STRIDE

    def place(self, image: np.ndarray) -> np.ndarray:
        """The image as the localizer's (size, size) float32 input."""
        resized = cv2.resize(image, (self.new_w, self.new_h), interpolation=cv2.INTER_AREA)
        if (self.new_h, self.new_w) == (self.size, self.size):
            return resized.astype(np.float32, copy=False)
        out = np.zeros((self.size, self.size), dtype=np.float32)
        out[self.top : self.top + self.new_h, self.left : self.left + self.new_w] = resized
        return out


def frame_of(shape: tuple[int, int], spacing, size: int) -> Frame:
    """The frame of an image of `shape` (h, w) with PixelSpacing `spacing` (row, column mm) in a size x size input."""
    h, w = int(shape[0]), int(shape[1])
    row_mm, col_mm = (float(v) for v in spacing)
    height, width = h * row_mm, w * col_mm
    side = max(height, width)
    new_h = size if height >= width else max(1, int(round(size * height / side)))
    new_w = size if width >= height else max(1, int(round(size * width / side)))
    return Frame(h, w, new_h, new_w, size, side / size)


def series_frame(series: Series, index: int, size: int) -> Frame:
    """The input frame of slice `index` of a series."""
    return frame_of(series.shape, series.spacings[index], size)


def stack_of(series: Series, index: int, size: int) -> np.ndarray:
    """Slices index-1, index, index+1 (ends repeated), each in the frame of slice `index`: (3, size, size).
    The volume may be float in [0, 1] or 8-bit (cache.to_stored)."""
    frame = series_frame(series, index, size)
    out = np.empty((3, size, size), dtype=np.float32)
    for k, j in enumerate((index - 1, index, index + 1)):
        out[k] = frame.place(to_unit(series.volume[min(max(j, 0), len(series) - 1)]))
    return out


def series_stacks(series: Series, size: int) -> np.ndarray:
    """stack_of for every slice of a series, (N, 3, size, size); each slice is resized once when the series'
    pixel spacing is the same throughout (the frame is then too)."""
    n = len(series)
    if n == 0 or not np.all(series.spacings == series.spacings[0]):
        return np.stack([stack_of(series, k, size) for k in range(n)]) if n else np.zeros((0, 3, size, size), np.float32)
    frame = series_frame(series, 0, size)
    placed = np.stack([frame.place(to_unit(image)) for image in series.volume])
    return placed[np.clip(np.arange(n)[:, None] + np.array([-1, 0, 1]), 0, n - 1)]
