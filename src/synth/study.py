"""One study: labels, anatomy, its series rendered and written, and the coordinates an annotator would click."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.constants import (
    AXIAL_T2,
    CONDITION_SERIES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SEVERITIES,
    TARGETS,
    row_id,
)
from ..core.memory import keep_freed_cpu_memory
from ..data import geometry
from .anatomy import SEQUENCES, Anatomy, Grid, render_anatomy, tissue_table
from .config import SynthConfig
from .labels import draw_severities, label_probabilities
from .render import axial_slices, finish_image, render_slice, rotation, sagittal_slices
from .write import write_series


def make_study(args: tuple) -> dict:
    """Render and write one study; returns its table rows (series, coordinates, latent truth)."""
    study_id, pattern, split, seed, cfg = args
    keep_freed_cpu_memory()  # each study's volumes (tens of MB) reuse the last one's pages, not fresh zeroed ones
    rng = np.random.default_rng(seed)
    severity = draw_severities(pattern, rng, cfg.thresholds)
    p = label_probabilities(severity, cfg.thresholds, cfg.reader_noise)
    written = np.array([rng.choice(3, p=pi / pi.sum()) for pi in p], dtype=float)
    written[np.isnan(pattern)] = np.nan
    anat, grid, stir = study_anatomy(severity, rng, cfg)
    pose = (rotation(rng, (6, 4, 8)), rng.uniform(-40, 40, 3) + np.array([0, 0, rng.uniform(-300, 0)]))
    scene = Scene(anat, grid, pose, gain=rng.uniform(300, 3000), noise=rng.uniform(*(cfg.var.noise or cfg.noise)),
                  stir=stir)
    plan = series_plan(rng, cfg)
    series_rows, series_geometry = write_study_series(study_id, cfg.out / f"{split}_images" / str(study_id), plan,
                                                      scene, rng, cfg)
    latent = latent_rows(study_id, severity, written, p, anat, pose)
    coords = annotate(study_id, written, anat, pose, series_geometry, rng, cfg)
    labels = {"study_id": study_id,
              **{c: (SEVERITIES[int(v)] if not np.isnan(v) else "") for c, v in zip(LABEL_COLUMNS, written)}}
    return {"split": split, "labels": labels, "series": series_rows, "coords": coords, "latent": latent}


@dataclass
class Scene:
    """What every series of a study is cut from: its anatomy and rendered volumes, the patient's pose in the
    scanner, and the scanner's gain, noise and whether its Sagittal T2/STIR is a STIR."""

    anat: Anatomy
    grid: Grid
    pose: tuple[np.ndarray, np.ndarray]
    gain: float
    noise: float
    stir: bool


def study_anatomy(severity: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> tuple[Anatomy, Grid, bool]:
    """The study's anatomy, its rendered volumes and whether its Sagittal T2/STIR series is a STIR."""
    anat = Anatomy(
        scale=rng.uniform(0.95, 1.05),
        level_gap=rng.uniform(34, 38),
        lordosis=rng.uniform(4, 12),
        severity=dict(zip(LABEL_COLUMNS, severity)),
    )
    v = cfg.var
    sequences, tissue = ("t1", "t2"), None
    if v.extended_anatomy:
        structures = ("canal", "Left foramen", "Right foramen", "Left recess", "Right recess")
        anat.extra_discs = [{k: float(rng.uniform(0.0, 0.3)) for k in structures} for _ in range(2)]
        anat.sacrum = True
    if v.contrast:
        tissue = tissue_table(rng, v.contrast)
    stir = bool(v.p_stir and rng.random() < v.p_stir)
    if stir:
        sequences = SEQUENCES
    return anat, render_anatomy(anat, cfg.voxel_mm, sequences, tissue), stir


def series_plan(rng: np.random.Generator, cfg: SynthConfig) -> list[tuple[str, list[int] | None]]:
    """Which series the study has, in acquisition order: (description, the levels an axial series covers)."""
    v = cfg.var
    p_axial = v.axial_series or cfg.p_axial_series
    n_axial = int(rng.choice(len(p_axial), p=p_axial)) + 1
    plan: list[tuple[str, list[int] | None]] = []
    for desc in (SAGITTAL_T2, SAGITTAL_T1):
        if v.sagittal_counts:
            plan.extend((desc, None) for _ in range(int(rng.choice(3, p=v.sagittal_counts[desc]))))
        elif rng.random() >= cfg.p_missing_series[desc]:
            plan.append((desc, None))
    if rng.random() >= cfg.p_missing_series[AXIAL_T2]:
        all_levels = list(range(5))
        if n_axial == 1:
            plan.append((AXIAL_T2, all_levels))
        else:
            cut = int(rng.integers(1, 4))
            parts = [all_levels[: cut + 1], all_levels[cut:]]  # upper and lower stacks overlapping at one level
            parts += [all_levels] * (n_axial - 2)  # repeated acquisitions
            plan.extend((AXIAL_T2, part) for part in parts)
    rng.shuffle(plan)
    return plan


def write_study_series(study_id: int, root: Path, plan: list, scene: Scene, rng: np.random.Generator,
                       cfg: SynthConfig) -> tuple[list[dict], list[tuple]]:
    """Render and write every series of the plan under root; returns the series table rows and each one's
    geometry."""
    v, anat, grid = cfg.var, scene.anat, scene.grid
    series_rows, series_geometry = [], []
    used_ids: set[int] = set()
    for number, (desc, levels) in enumerate(plan, start=1):
        series_id = int(rng.integers(10**7, 4 * 10**9))
        while series_id in used_ids:
            series_id = int(rng.integers(10**7, 4 * 10**9))
        used_ids.add(series_id)
        if desc == AXIAL_T2:
            specs, gap = axial_slices(anat, rng, cfg, levels)
            volume = grid.t2
        else:
            specs, gap = sagittal_slices(anat, rng, cfg)
            volume = grid.t1 if desc == SAGITTAL_T1 else grid.volumes["stir" if scene.stir else "t2"]
        thickness = float(gap * rng.uniform(0.85, 1.0))
        gamma = float(rng.uniform(*v.gamma)) if v.gamma[0] != v.gamma[1] else v.gamma[0]
        bias = float(rng.uniform(*v.bias)) if v.bias[0] != v.bias[1] else v.bias[0]
        images = [finish_image(render_slice(grid, volume, sp, thickness), rng, scene.noise, scene.gain, bias, gamma)
                  for sp in specs]
        meta = dict(study_id=study_id, series_id=series_id, series_number=number, description=desc,
                    thickness=round(thickness, 2), gap=round(gap, 2))
        geo = write_series(root / str(series_id), images, specs, scene.pose, meta, rng, cfg)
        series_rows.append({"study_id": study_id, "series_id": series_id, "series_description": desc})
        series_geometry.append((series_id, desc, geo))
    return series_rows, series_geometry


def latent_rows(study_id: int, severity: np.ndarray, written: np.ndarray, p: np.ndarray, anat: Anatomy,
                pose: tuple) -> list[dict]:
    """The hidden truth of every label column: latent severity, written label, p(label | s), 3D point."""
    rot, shift = pose
    rows = []
    for j in range(len(LABEL_COLUMNS)):
        condition, level = CONDITIONS[j // 5], LEVELS[j % 5]
        point = rot @ anat.structure_point(condition, j % 5) + shift
        rows.append({"row_id": row_id(study_id, condition, level), "study_id": study_id, "condition": condition,
                     "level": level, "severity": severity[j], "label": written[j],
                     **{f"p_{t}": p[j, i] for i, t in enumerate(TARGETS)},
                     "px": point[0], "py": point[1], "pz": point[2]})
    return rows


def annotate(study_id: int, written: np.ndarray, anat: Anatomy, pose: tuple, series_geometry: list[tuple],
             rng: np.random.Generator, cfg: SynthConfig) -> list[dict]:
    """The coordinates an annotator clicks: each labelled point on the nearest slice of its series type."""
    coords: list[dict] = []
    missing_levels: set[int] = set()
    v = cfg.var
    if v.p_study_missing_coordinates and rng.random() < v.p_study_missing_coordinates:
        missing_levels = {int(k) for k in rng.choice(5, size=int(rng.integers(1, 4)), replace=False)}
    rot, shift = pose
    for j in range(len(LABEL_COLUMNS)):
        condition, level = CONDITIONS[j // 5], LEVELS[j % 5]
        if np.isnan(written[j]) or rng.random() < cfg.p_missing_coordinate or j % 5 in missing_levels:
            continue
        point = rot @ anat.structure_point(condition, j % 5) + shift
        best = nearest_slice(point, [(sid, geo) for sid, desc, geo in series_geometry
                                     if desc == CONDITION_SERIES[condition]])
        if best is None:
            continue
        series_id, g = best
        x, y, _ = geometry.patient_to_pixel(point, g["position"], g["orientation"], g["spacing"])
        jitter = rng.normal(0, 0.5, 2) / g["spacing"][::-1]  # annotators click within about half a mm
        coords.append({"study_id": study_id, "series_id": series_id, "instance_number": g["instance"],
                       "condition": condition, "level": level, "x": float(x + jitter[0]), "y": float(y + jitter[1])})
    return coords


def nearest_slice(point: np.ndarray, series: list[tuple[int, list[dict]]]) -> tuple[int, dict] | None:
    """(series id, slice geometry) of the slice nearest a patient point among the series' slices that
    contain it; None when none does."""
    best = None
    for series_id, geo in series:
        pos = np.stack([g["position"] for g in geo])
        ori = np.stack([g["orientation"] for g in geo])
        spa = np.stack([g["spacing"] for g in geo])
        shp = np.stack([g["shape"] for g in geo])
        i, dist = geometry.nearest_slice(point, pos, ori, spa, shp)
        if i >= 0 and (best is None or dist < best[0]):
            best = (dist, series_id, geo[i])
    return None if best is None else best[1:]
