"""Atomic file writes: a temporary file beside the target, renamed over it once complete.

A kill mid-write never leaves a half-written checkpoint, cache entry or CSV; the next run sees either the
old file or the new one.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .progress import first_line


def temp_path(path: Path, suffix: str = "") -> Path:
    """The temporary name used while `path` is written (hidden, tagged with the process id)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def remove_orphans(folder: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in a folder (temp_path's names); returns them."""
    found = [p for p in Path(folder).glob(".*.tmp*") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found


@contextmanager
def cache_lock(path: str | Path) -> Iterator[None]:
    """Held while one process builds the cache file `path` (a file lock beside it, PATH.lock): another process
    that needs the same file waits, then finds it built, so two trainings started together cut it once."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` when the block ends, and is removed on error.

    suffix: an ending the writer insists on (np.save adds .npy, np.savez .npz unless the name has it).
    """
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:  # a full disk or a read-only folder: say which file could not be written
        if err.filename is None or Path(err.filename) == tmp:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """frame.to_csv(path, index=False), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(obj: Any, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=1), path)


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save, atomically. torch's zip writer reports a full disk as a RuntimeError ('unexpected pos',
    'file write failed'): it becomes an OSError naming `path`, as every other failed write here."""
    import torch  # here, not at import: the generator and the CSV-only scripts never load torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:
            raise OSError(errno.EIO, f"torch.save failed ({first_line(err)}); is the disk full?", str(tmp)) from None


def copy_file(source: str | Path, path: str | Path) -> None:
    """shutil.copy2(source, path), atomically."""
    with atomic_path(path) as tmp:
        shutil.copy2(source, tmp)
