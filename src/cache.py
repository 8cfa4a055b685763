"""Preprocessing cache: every series decoded once (read_series) into an .npz (float16 volume) with its geometry.

Layout: {cache_dir}/{split}_images/{study_id}/{series_id}.npz. Writing is atomic (temporary file, then
rename), so an interrupted run leaves only whole files and a rerun picks up where it stopped.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text
from .dicom import DicomError, Series, read_series
from .parallel import progress_map
from .tables import load_series_descriptions


def series_cache_path(cache_dir: Path, split: str, study_id: int, series_id: int) -> Path:
    return Path(cache_dir) / f"{split}_images" / str(int(study_id)) / f"{int(series_id)}.npz"


def save_series(series: Series, path: Path) -> None:
    """Write a Series to `path` atomically (volume as float16: [0, 1] intensities lose nothing that matters)."""
    with atomic_path(path, ".npz") as tmp:
        np.savez(
            tmp,
            volume=series.volume.astype(np.float16),
            instance_numbers=series.instance_numbers,
            positions=series.positions,
            orientations=series.orientations,
            spacings=series.spacings,
            thickness=np.float64(np.nan if series.thickness is None else series.thickness),
            description=np.str_(series.description or ""),
            n_orientation_groups=np.int64(series.n_orientation_groups),
            warnings=np.array(series.warnings, dtype=str),
        )


def cached_warnings(path: Path) -> str:
    """What reading a cached series warned about, as one line ('' when nothing)."""
    with np.load(path) as z:
        return "; ".join(z["warnings"].tolist()) if "warnings" in z.files else ""


def load_series(path: Path) -> Series:
    """Read a cached Series back (volume as float32)."""
    with np.load(path) as z:
        thickness = float(z["thickness"])
        return Series(
            path=Path(path),
            volume=z["volume"].astype(np.float32),
            instance_numbers=z["instance_numbers"],
            positions=z["positions"],
            orientations=z["orientations"],
            spacings=z["spacings"],
            thickness=None if np.isnan(thickness) else thickness,
            description=str(z["description"]) or None,
            n_orientation_groups=int(z["n_orientation_groups"]),
        )


@dataclass
class _Job:
    src: Path
    dst: Path
    description: str
    study_id: int


def _run(job: _Job) -> tuple[str, str]:
    if job.dst.is_file():
        return "cached", cached_warnings(job.dst)
    if not job.src.is_dir():
        return "missing", f"{job.src}: series folder not found"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kept in series.warnings; reported once in the summary
            series = read_series(job.src, normalize=True, description=job.description)
    except DicomError as err:
        return "failed", str(err)
    save_series(series, job.dst)
    return "written", "; ".join(series.warnings)


def prepare(data_dir: Path, cache_dir: Path, split: str = "train", workers: int = 2, series: pd.DataFrame | None = None,
            problems: list[tuple[int, bool, str]] | None = None) -> dict[str, int]:
    """Decode every series of `series` (default: {split}_series_descriptions.csv) into the cache; returns counts.

    Idempotent (series already cached are skipped) and safe to interrupt. A series that cannot be read is
    reported and left out; it never stops the run. Every series read with a problem (missing, unreadable,
    repaired) is named with its study in one warning, appended to `problems` as (study_id, whether the
    series was lost, text) and listed in {cache_dir}/{split}_problems.log.
    """
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    if series is None:
        series = load_series_descriptions(data_dir / f"{split}_series_descriptions.csv", strict=False)
    jobs = [_Job(data_dir / f"{split}_images" / str(r.study_id) / str(r.series_id),
                 series_cache_path(cache_dir, split, r.study_id, r.series_id), r.series_description, int(r.study_id))
            for r in series.itertuples()]
    counts = {"written": 0, "cached": 0, "missing": 0, "failed": 0}
    notes: list[tuple[int, bool, str]] = []
    results = progress_map(_run, jobs, workers, f"cache {split}", chunksize=4) if any(not j.dst.is_file() for j in jobs) \
        else map(_run, jobs)
    for job, (status, note) in zip(jobs, results):
        counts[status] += 1
        if note:
            notes.append((job.study_id, status in ("missing", "failed"), note))
    if notes:
        log = cache_dir / f"{split}_problems.log"
        write_text("".join(f"study {sid}: {text}\n" for sid, _, text in notes), log)
        studies = sorted({sid for sid, _, _ in notes})
        shown = "\n  ".join(f"study {sid}: {text}" for sid, _, text in notes[:3])
        warnings.warn(f"{len(notes)} series of {len(studies)} studies read with problems (studies "
                      f"{', '.join(map(str, studies))}); all listed in {log}, e.g.\n  {shown}", stacklevel=2)
        if problems is not None:
            problems.extend(notes)
    return counts
