"""Predict level coordinates for studies without labels (stage 1):
python localize.py --data-dir DIR --split test|train [--runs runs/] --out PATH

Writes the train_label_coordinates.csv format (plus a confidence column): one row per study, condition
and level where the needed series exists, so stage 2 cuts crops from it exactly as from labelled points.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from src.localize import localize  # noqa: E402
from src.parallel import default_workers  # noqa: E402
from src.paths import RUNS_DIR, SYNTH_DIR, default_cache_dir  # noqa: E402


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=SYNTH_DIR)
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--runs", type=Path, default=RUNS_DIR)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="localizer folds to use (default: all found)")
    ap.add_argument("--workers", type=int, default=default_workers(), help="processes (default: usable CPUs, at most 8)")
    a = ap.parse_args(argv)
    coords = localize(a.data_dir, a.split, a.runs, a.cache_dir or default_cache_dir(a.data_dir), folds=a.folds,
                      workers=a.workers)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    coords.to_csv(a.out, index=False)
    print(f"wrote {a.out}: {len(coords)} points for {coords['study_id'].nunique()} studies")
    return coords


if __name__ == "__main__":
    main()
