"""Default locations, all relative to the repository; every script takes flags to override them.

Each dataset gets its own folders, named after its data folder (dataset_name): runs/<dataset>/,
folds/<dataset>/folds.csv, submission/<dataset>/, reports/<dataset>/ and input/cache/<dataset>-<path hash>/,
so runs trained on the synthetic data never mix with those of the real data.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INPUT_DIR = REPO / "input"
SYNTH_DIR = INPUT_DIR / "synth"  # the embedded default dataset
FOLDS_ROOT = REPO / "folds"
RUNS_ROOT = REPO / "runs"
SUBMISSION_ROOT = REPO / "submission"
REPORTS_ROOT = REPO / "reports"
# The real competition labels, beside the repository in this project's layout (never copied into it);
# the synthetic generator copies label patterns from it when present.
DEFAULT_PATTERNS = REPO.parent / "shared" / "rsna2024" / "train.csv"
CACHE_ROOT = INPUT_DIR / "cache"


def dataset_name(data_dir: str | Path) -> str:
    """The name a dataset's folders carry: its data folder's name ('synth', 'rsna-2024-lumbar-...')."""
    return Path(data_dir).resolve().name or "data"


def runs_dir_for(data_dir: str | Path, runs: str | Path | None = None) -> Path:
    """A dataset's runs folder: runs when given (--runs), else runs/<dataset>."""
    return Path(runs) if runs else RUNS_ROOT / dataset_name(data_dir)


def folds_file_for(data_dir: str | Path, folds: str | Path | None = None) -> Path:
    """A dataset's folds file: folds when given (--folds), else folds/<dataset>/folds.csv."""
    return Path(folds) if folds else FOLDS_ROOT / dataset_name(data_dir) / "folds.csv"


def submission_dir_for(data_dir: str | Path) -> Path:
    """Where a dataset's submissions go by default: submission/<dataset>."""
    return SUBMISSION_ROOT / dataset_name(data_dir)


def reports_dir_for(data_dir: str | Path) -> Path:
    """Where a dataset's reports go by default: reports/<dataset>."""
    return REPORTS_ROOT / dataset_name(data_dir)


def cache_dir_for(data_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The preprocessing cache of a dataset: cache_dir when given (--cache-dir), else
    input/cache/<data-dir name>-<hash of its resolved path>, so two datasets in folders of the same name
    never share a cache."""
    if cache_dir:
        return Path(cache_dir)
    resolved = Path(data_dir).resolve()
    return CACHE_ROOT / f"{resolved.name}-{hashlib.md5(str(resolved).encode()).hexdigest()[:8]}"


def portable(path: str | Path) -> str:
    """A path as a saved config holds it: relative to the repository (a path outside it as a relative path
    from it), never an absolute path of this machine."""
    return Path(os.path.relpath(Path(path).resolve(), REPO)).as_posix()


def dataset_dirs(data_dir: str | Path) -> list[Path]:
    """A dataset's default folders, in the order the Makefile reads them: runs, folds file, submissions,
    reports (`python -m src.core.paths DATA` prints them, relative to the working directory)."""
    return [runs_dir_for(data_dir), folds_file_for(data_dir), submission_dir_for(data_dir), reports_dir_for(data_dir)]


if __name__ == "__main__":
    import sys

    print(" ".join(os.path.relpath(p) for p in dataset_dirs(sys.argv[1])))
