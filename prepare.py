"""Decode every DICOM series once into the preprocessing cache: python prepare.py --data-dir DIR [--split train]"""
from __future__ import annotations

import argparse
from pathlib import Path

from src.cache import prepare
from src.parallel import default_workers
from src.paths import SYNTH_DIR, default_cache_dir


def main(argv: list[str] | None = None) -> dict[str, int]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=SYNTH_DIR)
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: input/cache/<data-dir name>")
    ap.add_argument("--split", choices=["train", "test"], default="train")
    ap.add_argument("--workers", type=int, default=default_workers(), help="processes (default: usable CPUs, at most 8)")
    a = ap.parse_args(argv)
    cache_dir = a.cache_dir or default_cache_dir(a.data_dir)
    counts = prepare(a.data_dir, cache_dir, a.split, a.workers)
    print(f"cache {cache_dir} ({a.split}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    main()
