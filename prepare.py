"""Decode every DICOM series once into the preprocessing cache: python prepare.py --data-dir DIR [--split train]"""
from __future__ import annotations

import sys

from src.core import cli
from src.core.paths import cache_dir_for
from src.data.cache import prepare


def main(argv: list[str] | None = None) -> dict[str, int]:
    ap = cli.parser(__doc__)
    cli.add_data_dir(ap)
    cli.add_cache_dir(ap)
    ap.add_argument("--split", choices=["train", "test"], default="train", help="which split's images")
    cli.add_workers(ap)
    a = ap.parse_args(argv)
    cache_dir = cache_dir_for(a.data_dir, a.cache_dir)
    counts = prepare(a.data_dir, cache_dir, a.split, a.workers)
    print(f"cache {cache_dir} ({a.split}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    sys.exit(cli.guard(main))
