"""Preprocessing cache: every series decoded once (read_series) into an .npz with its geometry.

Layout: {cache_dir}/{split}_images/{study_id}/{series_id}.npz. Each slice is stored 8-bit after the series'
percentile window (read_series), compressed one image at a time: JPEG at quality 95 by default (mean
absolute error about 1.5/255, below MR noise; about 0.38 bytes per pixel, so the real training set's
147,000 images fit in about 14 GB), or lossless PNG (`codec="png"`). Each entry carries the fingerprint of
its DICOM files (names, sizes, mtimes): an edited, moved or different series is decoded again, and a series
that has gone is removed from the cache, so stale data is never served. Writing is atomic (temporary file,
then rename): an interrupted run leaves only whole files and a rerun picks up where it stopped, one series
in memory per worker.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from ..core.atomic import atomic_path, write_text
from ..core.parallel import progress_map
from .dicom import DicomError, Series, read_series
from .tables import load_series_descriptions

if TYPE_CHECKING:
    import torch

CODECS = {"jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 6])}
DEFAULT_CODEC = "jpeg"


def series_cache_path(cache_dir: Path, split: str, study_id: int, series_id: int) -> Path:
    return Path(cache_dir) / f"{split}_images" / str(int(study_id)) / f"{int(series_id)}.npz"


def series_fingerprint(folder: Path) -> str:
    """Identity of a series' DICOM files: a hash of their names, sizes and modification times ('' if none)."""
    try:
        entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)
                         if e.name.endswith(".dcm"))
    except (FileNotFoundError, NotADirectoryError):
        return ""
    return hashlib.md5(repr(entries).encode()).hexdigest() if entries else ""


def entries_signature(cache_dir: Path, split: str, pairs) -> bytes:
    """Identity of the cache entries of (study_id, series_id) pairs (their sizes and mtimes), for caches built
    from them (crops, slice stores): a re-decoded series gives another signature, so nothing stale is reused."""
    stats = []
    for study_id, series_id in sorted({(int(a), int(b)) for a, b in pairs}):
        path = series_cache_path(cache_dir, split, study_id, series_id)
        st = path.stat() if path.is_file() else None
        stats.append((study_id, series_id, st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return hashlib.md5(repr(stats).encode()).digest()


def to_unit(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Stored images as float32 in [0, 1], numpy or torch (on its device): 8-bit stores (crops, slice stores,
    the series cache) are divided by 255; float images pass as they are."""
    if type(images).__module__.startswith("torch"):
        # a tensor (torch is not imported here: the cache builders and prepare.py never load it)
        return images.float() / 255.0 if str(images.dtype) == "torch.uint8" else images.float()
    images = np.asarray(images)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def to_stored(images: np.ndarray) -> np.ndarray:
    """[0, 1] images as 8 bits, the form the crop and slice stores keep (a quarter of float32)."""
    return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def encode_volume(volume: np.ndarray, codec: str = DEFAULT_CODEC) -> tuple[np.ndarray, np.ndarray]:
    """A [0, 1] volume as 8-bit images compressed one by one: (concatenated bytes, offsets of each image)."""
    ext, params = CODECS[codec]
    parts = [cv2.imencode(ext, to_stored(im), params)[1] for im in volume]
    offsets = np.cumsum([0] + [len(b) for b in parts]).astype(np.int64)
    return (np.concatenate(parts) if parts else np.zeros(0, np.uint8)), offsets


def decode_volume(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """encode_volume's bytes back to a float32 volume in [0, 1]."""
    images = [cv2.imdecode(data[offsets[k]:offsets[k + 1]], cv2.IMREAD_GRAYSCALE) for k in range(len(offsets) - 1)]
    return to_unit(np.stack(images))


def save_series(series: Series, path: Path, fingerprint: str = "", codec: str = DEFAULT_CODEC) -> None:
    """Write a Series to `path` atomically, its volume compressed (encode_volume)."""
    data, offsets = encode_volume(series.volume, codec)
    with atomic_path(path, ".npz") as tmp:
        np.savez(
            tmp,
            images=data,
            offsets=offsets,
            instance_numbers=series.instance_numbers,
            positions=series.positions,
            orientations=series.orientations,
            spacings=series.spacings,
            thickness=np.float64(np.nan if series.thickness is None else series.thickness),
            description=np.str_(series.description or ""),
            n_orientation_groups=np.int64(series.n_orientation_groups),
            warnings=np.array(series.warnings, dtype=str),
            fingerprint=np.str_(fingerprint),
        )


def cached_meta(path: Path) -> tuple[str, str] | None:
    """(fingerprint, warnings as one line) of a cache entry, or None when there is no readable entry."""
    try:
        with np.load(path) as z:
            if "images" not in z.files:  # an entry of an older layout: decode again
                return None
            return str(z["fingerprint"]), "; ".join(z["warnings"].tolist())
    except (OSError, ValueError, KeyError):
        return None


def load_series(path: Path, pixels: bool = True) -> Series:
    """Read a cached Series back (volume as float32 in [0, 1]). pixels=False: the geometry alone, for what
    maps points between pixels and mm; the volume then has the series' shape but reads as zeros (read-only),
    and only the first slice is decoded, for that shape."""
    with np.load(path) as z:
        thickness = float(z["thickness"])
        offsets = z["offsets"]
        if pixels:
            volume = decode_volume(z["images"], offsets)
        else:
            first = decode_volume(z["images"][: offsets[1]], offsets[:2])
            volume = np.broadcast_to(np.zeros((), np.float32), (len(offsets) - 1, *first.shape[1:]))
        return Series(
            path=Path(path),
            volume=volume,
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
    fingerprint: str = ""


def _run(job: _Job) -> tuple[str, str]:
    if not job.fingerprint:
        job.dst.unlink(missing_ok=True)  # the series has gone: never serve its old entry
        return "missing", f"{job.src}: series folder not found or without .dcm files"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kept in series.warnings; reported once in the summary
            series = read_series(job.src, normalize=True, description=job.description)
    except DicomError as err:
        job.dst.unlink(missing_ok=True)
        return "failed", str(err)
    save_series(series, job.dst, job.fingerprint)
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
    results: dict[int, tuple[str, str]] = {}
    for k, job in enumerate(jobs):
        job.fingerprint = series_fingerprint(job.src)
        if not job.fingerprint:  # the series has gone: nothing to decode, no worker needed
            results[k] = _run(job)
            continue
        meta = cached_meta(job.dst)
        if meta is not None and meta[0] == job.fingerprint:
            results[k] = ("cached", meta[1])
    todo = [k for k in range(len(jobs)) if k not in results]
    if todo:
        for k, result in zip(todo, progress_map(_run, [jobs[k] for k in todo], workers, f"cache {split}", chunksize=4)):
            results[k] = result
    for k, job in enumerate(jobs):
        status, note = results[k]
        counts[status] += 1
        if note:
            notes.append((job.study_id, status in ("missing", "failed"), note))
    if notes:
        log = cache_dir / f"{split}_problems.log"
        write_text("".join(f"study {sid}: {text}\n" for sid, _, text in notes), log)
        studies = sorted({sid for sid, _, _ in notes})
        shown = "\n  ".join(f"study {sid}: {text}" for sid, _, text in notes[:3])
        if problems is not None:  # the caller names them (inference: once each, in its fault summary)
            problems.extend(notes)
        else:
            warnings.warn(f"{len(notes)} series of {len(studies)} studies read with problems (studies "
                          f"{', '.join(map(str, studies))}); all listed in {log}, e.g.\n  {shown}", stacklevel=2)
    return counts
