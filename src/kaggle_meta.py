"""Kaggle packaging helpers for the Makefile.

python -m src.kaggle_meta TEMPLATE OUT      metadata JSON with KAGGLE_USERNAME filled in from the environment
                                             or ~/.kaggle/kaggle.json
python -m src.kaggle_meta --copy-runs RUNS DEST   copy each run's config.yaml, best.pt and ensemble.json
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path


def kaggle_username() -> str:
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    creds = Path.home() / ".kaggle" / "kaggle.json"
    if creds.is_file():
        return json.loads(creds.read_text())["username"]
    raise SystemExit("no Kaggle username: export KAGGLE_USERNAME or put kaggle.json in ~/.kaggle/")


def fill(template: Path, out: Path, username: str) -> dict:
    meta = json.loads(template.read_text().replace("KAGGLE_USERNAME", username))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def copy_runs(runs: Path, dest: Path) -> list[Path]:
    """What inference needs from runs/: config.yaml and best.pt of every fold, and ensemble.json."""
    copied = []
    for path in sorted(runs.rglob("*")):
        if path.name in ("config.yaml", "best.pt", "ensemble.json") and path.is_file():
            target = dest / path.relative_to(runs)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(target)
    return copied


if __name__ == "__main__":
    if sys.argv[1] == "--copy-runs":
        print(f"copied {len(copy_runs(Path(sys.argv[2]), Path(sys.argv[3])))} files")
    else:
        fill(Path(sys.argv[1]), Path(sys.argv[2]), kaggle_username())
