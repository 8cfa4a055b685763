"""Default locations, all relative to the repository; every script takes flags to override them."""
from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INPUT_DIR = REPO / "input"
SYNTH_DIR = INPUT_DIR / "synth"  # the embedded default dataset
FOLDS_FILE = REPO / "folds" / "folds.csv"
RUNS_DIR = REPO / "runs"
SUBMISSION_DIR = REPO / "submission"
REPORTS_DIR = REPO / "reports"
# The real competition labels, beside the repository in this project's layout (never copied into it);
# the synthetic generator copies label patterns from it when present.
DEFAULT_PATTERNS = REPO.parent / "shared" / "rsna2024" / "train.csv"
CACHE_ROOT = INPUT_DIR / "cache"


def cache_dir_for(data_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The preprocessing cache of a dataset: cache_dir when given (--cache-dir), else
    input/cache/<data-dir name>-<hash of its resolved path>, so two datasets in folders of the same name
    never share a cache."""
    if cache_dir:
        return Path(cache_dir)
    resolved = Path(data_dir).resolve()
    return CACHE_ROOT / f"{resolved.name}-{hashlib.md5(str(resolved).encode()).hexdigest()[:8]}"
