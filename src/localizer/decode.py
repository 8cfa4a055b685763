"""From heatmaps to coordinate rows in the train_label_coordinates.csv format (plus a confidence, and the
neighbouring slice of a point between two with its weight).

Levels on a searched (sagittal) series are assigned jointly, head to feet; the patient's left and right
always come from 3D geometry (+x is the patient's left in DICOM's LPS space), never from the network, since
the two sides look alike.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr

from ..core.constants import PREDICTED_COORDINATE_COLUMNS
from ..data.dicom import Series
from ..data.geometry import holds_point, slice_normal
from .frame import Frame, frame_of
from .plan import STRIDE, Part

PATIENT_LEFT = np.array([1.0, 0.0, 0.0])


def refine_peak(heat: np.ndarray, y: int, x: int, radius: int = 2) -> tuple[float, float]:
    """Sub-pixel peak: heat-weighted centroid in a small window around the arg-max."""
    y0, y1 = max(y - radius, 0), min(y + radius + 1, heat.shape[0])
    x0, x1 = max(x - radius, 0), min(x + radius + 1, heat.shape[1])
    w = heat[y0:y1, x0:x1]
    w = np.clip(w - w.min(), 0, None)
    if w.sum() <= 0:
        return float(y), float(x)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())


def slice_leftness(series: Series) -> np.ndarray:
    """Each slice centre's patient-left coordinate (mm)."""
    h, w = series.shape
    centres = np.stack([series.pixel_to_patient(k, (w - 1) / 2, (h - 1) / 2) for k in range(len(series))])
    return centres @ PATIENT_LEFT


def side_of_slices(series: Series, midline: np.ndarray | None, weights: np.ndarray | None = None) -> np.ndarray:
    """+1 for slices on the patient's left of the mid-sagittal plane, -1 on the right.

    The plane goes through `midline` when given (the spinal canal points); else through the mean of the
    slices weighted by the square of `weights` (how strongly each slice shows the lateral structures, which
    lie on both sides alike, so their mean is the midline); else through the series centre."""
    left = slice_leftness(series)
    if midline is not None:
        ref = float(np.asarray(midline) @ PATIENT_LEFT)
    elif weights is not None and np.sum(weights) > 0:
        w = np.asarray(weights, float) ** 2
        ref = float((w * left).sum() / w.sum())
    else:
        ref = float(left.mean())
    return np.where(left - ref >= 0, 1, -1)


def cell_points(series: Series, k: int, frame: Frame, shape: tuple[int, int]) -> np.ndarray:
    """The patient point (mm) of every heatmap cell's centre on slice k: (h, w, 3)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return series.pixel_to_patient(k, *frame.to_image((xx + 0.5) * STRIDE - 0.5, (yy + 0.5) * STRIDE - 0.5))


def structure_centre(profile: np.ndarray, depth: np.ndarray) -> tuple[int, float]:
    """The slice nearest the centre of a structure seen on several slices, and that centre's depth (mm).

    profile is one cell's heat on each slice and depth each slice's position along the normal (mm). The
    centre is the heat-weighted mean depth of the run of neighbouring slices around the maximum whose heat
    exceeds half of it, each weighted by its excess over half: a wide structure (the spinal canal spans
    four or five sagittal slices) is read at its middle, not on whichever of its slices happens to peak;
    for one about as wide as the slice gap (a foramen) the centre says how near each of two slices it lies
    (slice_alternative).
    """
    order = np.argsort(depth)
    p, d = np.asarray(profile, float)[order], np.asarray(depth, float)[order]
    top = int(np.argmax(p))
    half = p[top] / 2
    lo, hi = top, top
    while lo > 0 and p[lo - 1] > half:
        lo -= 1
    while hi < len(p) - 1 and p[hi + 1] > half:
        hi += 1
    w = p[lo : hi + 1] - half
    if w.sum() <= 0:
        return int(order[top]), float(d[top])
    centre = float((w * d[lo : hi + 1]).sum() / w.sum())
    return int(order[lo + int(np.argmin(np.abs(d[lo : hi + 1] - centre)))]), centre


MIN_ALTERNATIVE_WEIGHT = 0.01  # a neighbouring slice less likely than this is not cut


def neighbour_weight(offset: float, gap: float, sd: float) -> float:
    """The chance that a point read `offset` mm from its slice (along the normal) lies nearer the slice `gap` mm
    away along the same normal, when the reading's depth error is N(0, sd^2)."""
    if sd <= 0 or gap == 0:
        return 0.0
    return float(ndtr((offset * np.sign(gap) - abs(gap) / 2) / sd))


def slice_alternative(depth: np.ndarray, j: int, centre: float, sd: float) -> tuple[int, float] | None:
    """Of slices at `depth` (mm along one normal) with a point read on slice j at depth `centre`: the
    neighbouring slice on the point's side and the chance that the point is nearer it (neighbour_weight),
    or None where there is none or that chance is under MIN_ALTERNATIVE_WEIGHT. Stage 2 cuts the point's
    crop on both slices and averages the two predictions by that chance, so a point read near the middle
    between two slices is not staked on one of them."""
    if sd <= 0 or len(depth) < 2:
        return None
    order = np.argsort(depth)
    pos = int(np.flatnonzero(order == j)[0]) + (1 if centre >= depth[j] else -1)
    if not 0 <= pos < len(order):
        return None
    k = int(order[pos])
    weight = neighbour_weight(centre - depth[j], depth[k] - depth[j], sd)
    return (k, weight) if weight >= MIN_ALTERNATIVE_WEIGHT else None


PARALLEL_COS = 0.99  # slices whose normals are within about 8 degrees are one stack's


def plane_alternative(series: Series, k: int, point: np.ndarray, sd: float) -> tuple[int, float] | None:
    """slice_alternative for a 3D point read on slice k: its neighbours in the series that are parallel to it
    and whose image holds the point (an axial series may be several stacks at different angles, and the
    next slice another stack's), with the point measured along slice k's normal."""
    normal = slice_normal(series.orientations[k])
    around = np.array([j for j in (k - 1, k, k + 1) if 0 <= j < len(series)])
    parallel = np.abs(slice_normal(series.orientations[around]) @ normal) >= PARALLEL_COS
    holds = holds_point(point, series.positions[around], series.orientations[around], series.spacings[around],
                        np.tile(series.shape, (len(around), 1)))
    near = [int(j) for j, same in zip(around, parallel & holds) if j == k or same]
    depth = (series.positions[near] - series.positions[k]) @ normal
    alt = slice_alternative(depth, near.index(k), float((np.asarray(point, float) - series.positions[k]) @ normal), sd)
    return None if alt is None else (near[alt[0]], alt[1])


def local_peaks(heat: np.ndarray, n: int, min_dist: float) -> list[tuple[int, int]]:
    """Up to n arg-max cells (y, x) of a 2D map, each at least min_dist cells from those found before."""
    work = np.array(heat, dtype=float)
    yy, xx = np.mgrid[0 : work.shape[0], 0 : work.shape[1]]
    out = []
    for _ in range(n):
        y, x = np.unravel_index(int(np.argmax(work)), work.shape)
        if not np.isfinite(work[y, x]):
            break
        out.append((int(y), int(x)))
        work[(yy - y) ** 2 + (xx - x) ** 2 < min_dist**2] = -np.inf
    return out


def candidate_peaks(levels: np.ndarray, any_level: np.ndarray, n_all: int, per_level: int,
                    min_dist: float) -> list[tuple[int, int]]:
    """Candidate disc cells: n_all peaks of the every-level map (h, w), then per_level peaks of each level's map
    (levels: (L, h, w)) not within min_dist / 2 of one already found."""
    peaks = local_peaks(any_level, n_all, min_dist)
    for channel in levels:
        for y, x in local_peaks(channel, per_level, min_dist):
            if all((y - py) ** 2 + (x - px) ** 2 >= (min_dist / 2) ** 2 for py, px in peaks):
                peaks.append((y, x))
    return peaks


def assign_levels(scores: np.ndarray, inferior: np.ndarray, min_gap: float,
                  max_gap: float = np.inf, max_ratio: float = np.inf) -> tuple[list[int] | None, float]:
    """Peaks for the levels, top to bottom, and how sure that assignment is.

    scores (levels, peaks) are each level's heat at each peak and inferior each peak's height (mm, feet up).
    Chooses one peak per level, in head-to-feet order with neighbours min_gap..max_gap mm apart and no gap
    over max_ratio times another (skipping a disc doubles a gap), maximising the summed log-heat. The
    confidence is the assignment's share of the likelihood (the product of its heats) over every valid
    assignment: two readings of the spine a level apart share it. (None, 0.0) when no assignment fits.
    """
    n_levels, n_peaks = scores.shape
    if n_peaks < n_levels:
        return None, 0.0
    order = np.argsort(inferior)
    # Every choice of n_levels peaks; combinations keep the head-to-feet order.
    combos = np.fromiter(itertools.chain.from_iterable(itertools.combinations(order, n_levels)), dtype=np.int64)
    combos = combos.reshape(-1, n_levels)
    gaps = np.diff(inferior[combos], axis=1)
    ok = np.all((gaps >= min_gap) & (gaps <= max_gap), axis=1) & (gaps.max(1) <= max_ratio * gaps.min(1))
    combos = combos[ok]
    if not len(combos):
        return None, 0.0
    log_heat = np.log(np.clip(scores, 1e-6, None))
    totals = log_heat[np.arange(n_levels), combos].sum(1)
    best = int(np.argmax(totals))
    share = 1.0 / float(np.exp(totals - totals[best]).sum())
    return [int(i) for i in combos[best]], share


@dataclass(frozen=True)
class Reading:
    """A condition's levels as read on a searched series: its rows and each level's height (mm, feet up:
    minus the patient z of its point)."""

    rows: tuple[dict, ...]
    heights: dict[str, float]


def coordinate_frame(rows: list[dict]) -> pd.DataFrame:
    """Predicted coordinate rows as a table (PREDICTED_COORDINATE_COLUMNS); a neighbouring slice's instance
    number is a whole number, empty where none is named."""
    frame = pd.DataFrame(rows, columns=list(PREDICTED_COORDINATE_COLUMNS))
    frame["alt_instance_number"] = pd.to_numeric(frame["alt_instance_number"]).astype("Int64")
    frame["alt_weight"] = pd.to_numeric(frame["alt_weight"]).fillna(0.0).astype(float)
    return frame


def reading_rows(readings: dict[str, Reading]) -> list[dict]:
    """Every row of a series' readings (read_searched), condition after condition."""
    return [r for reading in readings.values() for r in reading.rows]


@dataclass(frozen=True)
class HeatSource:
    """Whose heatmaps are decoded: the series (its study and series ids, loaded) and the localizer input size
    (px) the heatmaps were made at."""

    study_id: int
    series_id: int
    series: Series
    size: int

    def row(self, k: int, condition: str, level: str, xy: tuple[float, float], confidence: float,
            alternative: tuple[int, float] | None = None) -> dict:
        """A predicted coordinate row on slice k; with `alternative` (slice_alternative) its neighbouring slice
        and that slice's weight."""
        alt_k, alt_w = alternative if alternative is not None else (None, 0.0)
        return {"study_id": self.study_id, "series_id": self.series_id,
                "instance_number": int(self.series.instance_numbers[k]), "condition": condition, "level": level,
                "x": xy[0], "y": xy[1], "confidence": confidence,
                "alt_instance_number": None if alt_k is None else int(self.series.instance_numbers[alt_k]),
                "alt_weight": alt_w}


@dataclass(frozen=True)
class Search:
    """How levels are found on a searched series: candidate peaks (per level and of the every-level channel),
    the plausible spacing of consecutive discs (mm, and the largest ratio between two gaps), and the spread of
    one level's heights across a study's series (mm: the canal and both foramina of a level lie within a few
    mm of one height; 0: each series read on its own), and the spread of a lateral or axial point's depth
    across its slices (mm; slice_alternative; 0: one slice per point)."""

    n_candidates: int = 10
    per_level: int = 1
    min_gap_mm: float = 15.0
    max_gap_mm: float = 70.0
    max_gap_ratio: float = 1.6
    level_sd_mm: float = 10.0
    slice_sd_mm: float = 1.0


def read_searched(part: Part, src: HeatSource, heat: np.ndarray, ks: np.ndarray, midline: np.ndarray | None = None,
                  search: Search = Search(), anchors: dict[str, float] | None = None) -> dict[str, Reading]:
    """Each condition's reading of a searched (sagittal) series from per-slice heatmaps (len(ks), C, h, w).

    A midline condition looks at every slice and is read on the slice nearest the structure's centre
    (structure_centre); a lateral one only at the slices on its side of the mid-sagittal plane (through
    `midline`, or the series centre), on the slice where its heat peaks, naming its neighbouring slice
    toward the structure's centre with the chance that the centre is nearer that one (slice_alternative,
    search.slice_sd_mm; above a half where the centre is nearer the neighbour). The peak slice stays the
    row's own: the localizer's out-of-fold errors there are what jitter trains attn_resnext on
    (docs/BENCHMARKS.md, tenth session). The candidate discs are the peaks of the
    every-level channel (where the discs are, whichever they are: those above L1/L2 and below L5/S1 too) and
    each level's own strongest peaks; levels are then assigned to those peaks jointly, in head-to-feet order
    with a plausible spacing (assign_levels), so the levels come from what each level's channel sees (the
    sacrum below L5/S1, the count from it), never from which disc is topmost in the image. A row's confidence
    is its peak heat times the assignment's confidence (low when a reading a level off is about as likely).

    With `anchors` (each level's height, mm feet up, read on another series of the study) each level's
    strongest cell within two search.level_sd_mm of its anchor is a candidate too, and a level's heat at a
    peak is weighted by N(peak height - anchor; 0, level_sd_mm): the levels where that series put them.
    """
    out: dict[str, Reading] = {}
    series, weights = src.series, None
    if midline is None:
        weights = np.zeros(len(series))
        weights[ks] = heat.max(axis=(1, 2, 3))
    slice_side = side_of_slices(series, midline, weights)[ks]
    frame = frame_of(series.shape, series.spacings[ks[0]], src.size)
    depth = series.depths[ks]
    levels = part.levels
    for condition, side in part.sides().items():
        candidates = np.arange(len(ks)) if side == 0 else np.flatnonzero(slice_side == side)
        if len(candidates) == 0:
            continue
        sub = heat[candidates]  # (K, C, h, w)
        top = sub.max(axis=0)  # (C, h, w): each channel's maximum over the slices
        peaks = candidate_peaks(top[: len(levels)], top[part.any_channel], search.n_candidates, search.per_level,
                                search.min_gap_mm / frame.mm_per_cell)
        h, w = top.shape[-2:]
        height_map = -cell_points(series, ks[candidates[0]], frame, (h, w))[..., 2]
        # A level at a cell: its channel's heat (which disc) times the every-level heat (a disc, and where).
        disc = top[: len(levels)] * top[part.any_channel]
        anchored = anchors is not None and search.level_sd_mm > 0
        if anchored:
            for c, level in enumerate(levels):
                if level in anchors:
                    near = np.abs(height_map - anchors[level]) <= 2 * search.level_sd_mm
                    if near.any():
                        cell = np.unravel_index(int(np.argmax(np.where(near, disc[c], -np.inf))), (h, w))
                        if tuple(map(int, cell)) not in peaks:
                            peaks.append((int(cell[0]), int(cell[1])))
        ys, xs = np.array(peaks).T
        scores = disc[:, ys, xs]  # (levels, peaks)
        inferior = height_map[ys, xs]
        if anchored:
            gap = inferior[None, :] - np.array([anchors.get(level, np.nan) for level in levels])[:, None]
            scores = scores * np.where(np.isnan(gap), 1.0, np.exp(-0.5 * (gap / search.level_sd_mm) ** 2))

        picks, sure = assign_levels(scores, inferior, search.min_gap_mm, search.max_gap_mm, search.max_gap_ratio)
        rows, heights = [], {}
        for c, level in enumerate(levels):
            if picks is not None:
                y, x = peaks[picks[c]]
            else:  # too few separate peaks: each level's own maximum, with little trust in the order
                y, x = np.unravel_index(int(np.argmax(sub[:, c].max(0))), sub.shape[-2:])
                sure = 0.1
            j, centre = structure_centre(sub[:, c, y, x], depth[candidates])
            alt = None  # the canal's slice may still move once the foramina are read (infer.recentre_midline)
            if side != 0:  # a foramen: its peak slice, and the neighbour toward its centre with that one's chance
                j = int(np.argmax(sub[:, c, y, x]))
                alt = slice_alternative(depth[candidates], j, centre, search.slice_sd_mm)
            xy = frame.heat_to_image(refine_peak(sub[j, c], y, x))
            rows.append(src.row(ks[candidates[j]], condition, level, xy, float(sub[j, c, y, x]) * sure,
                                None if alt is None else (ks[candidates[alt[0]]], alt[1])))
            heights[level] = float(height_map[y, x])
        out[condition] = Reading(tuple(rows), heights)
    return out


def decode_searched(part: Part, src: HeatSource, heat: np.ndarray, ks: np.ndarray, midline: np.ndarray | None = None,
                    search: Search = Search()) -> list[dict]:
    """Rows for every condition and level of a searched series read on its own (read_searched)."""
    return reading_rows(read_searched(part, src, heat, ks, midline, search))


# On a geometry-sliced (axial) slice: how far a lateral structure may be from the canal, and how far apart the
# two strongest peaks must be when the canal is not known.
REACH_MM = 30.0
MIN_DIST_MM = 8.0


def decode_slice(part: Part, src: HeatSource, k: int, heat: np.ndarray, level: str,
                 midline: np.ndarray | None = None, alternative: tuple[int, float] | None = None) -> list[dict]:
    """Rows of a geometry-sliced (axial) part on the slice assigned to `level`, from its heatmap (h, w).

    With `midline` (the level's 3D point on the spinal canal, from the sagittal series) each lateral
    condition is its side's strongest peak within REACH_MM of the canal: the two sides look alike, so two
    peaks on one side (one recess and a lookalike) would otherwise name one of them the other side.
    Without it, the two strongest peaks at least MIN_DIST_MM apart, named by their patient x (left is +x).
    Every row names `alternative` (plane_alternative: the level's neighbouring slice and its weight).
    """
    series = src.series
    frame = frame_of(series.shape, series.spacings[k], src.size)
    sides = part.sides()
    if midline is not None:
        cells = cell_points(series, k, frame, heat.shape)
        mx, my, _ = series.patient_to_pixel(k, np.asarray(midline, float))
        centre = series.pixel_to_patient(k, float(mx), float(my))  # the canal point on this slice
        left = (cells - centre) @ PATIENT_LEFT
        near = np.linalg.norm(cells - centre, axis=-1) <= REACH_MM
        rows = []
        for condition in part.conditions:
            side = sides[condition]
            mask = near if side == 0 else near & (np.sign(left) == side)
            masked = np.where(mask, heat, -np.inf) if mask.any() else heat
            y, x = np.unravel_index(int(np.argmax(masked)), heat.shape)
            rows.append(src.row(k, condition, level, frame.heat_to_image(refine_peak(heat, y, x)), float(heat[y, x]),
                                alternative))
        return rows
    peaks = local_peaks(heat, len(part.conditions), max(MIN_DIST_MM / frame.mm_per_cell, 1.0))
    peaks += peaks[-1:] * (len(part.conditions) - len(peaks))  # a map too small for separate peaks
    found = [(frame.heat_to_image(refine_peak(heat, y, x)), float(heat[y, x])) for y, x in peaks]
    leftness = [float(series.pixel_to_patient(k, *xy) @ PATIENT_LEFT) for xy, _ in found]
    by_left = sorted(range(len(found)), key=lambda i: -leftness[i])  # stable: ties keep the peak order
    by_side = sorted(part.conditions, key=lambda c: -sides[c])
    return [src.row(k, condition, level, *found[i], alternative) for condition, i in zip(by_side, by_left)]


def decode_series_points(part: Part, src: HeatSource, heat: np.ndarray, ks: np.ndarray,
                         labelled: pd.DataFrame | None = None) -> pd.DataFrame:
    """Validation decoding: searched series as at test time; geometry-sliced ones on their labelled slices."""
    if part.searched:
        rows = decode_searched(part, src, heat, ks)
    else:
        rows = []
        for j, k in enumerate(ks):
            on_slice = labelled[labelled["instance_number"] == src.series.instance_numbers[k]] if labelled is not None else []
            if len(on_slice):
                rows += decode_slice(part, src, int(k), heat[j, 0], on_slice["level"].iloc[0])
    return coordinate_frame(rows)
