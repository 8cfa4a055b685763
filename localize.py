"""Predict level coordinates for studies without labels (stage 1):
python localize.py --data-dir DIR --split test|train [--runs runs/<data-dir name>] --out PATH

Writes the train_label_coordinates.csv format (plus a confidence column, and alt_instance_number and
alt_weight: the neighbouring slice of a point that lies between two, and its weight): one row per study,
condition and level where the needed series exists, so stage 2 cuts crops from it exactly as from
labelled points (and on both slices where a second is named).
Exit codes: 0 written; 2 bad command line or a missing data or runs folder; 3 written, but no localizer
could be used (no point).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import src.registry  # noqa: E402,F401 - every model registered (the runs listing reads it)
from src.core import cli  # noqa: E402
from src.core.atomic import write_csv  # noqa: E402
from src.core.faults import MODEL_DROPPED_EXIT  # noqa: E402  (written, but no model was used)
from src.core.parallel import loader_workers  # noqa: E402
from src.core.paths import cache_dir_for  # noqa: E402
from src.data.cache import prepare  # noqa: E402
from src.data.tables import DataError  # noqa: E402
from src.inference.pipeline import series_table  # noqa: E402
from src.localizer.infer import Localizer, localize  # noqa: E402


def main(argv: list[str] | None = None):
    ap = cli.parser(__doc__)
    cli.add_data_dir(ap)
    ap.add_argument("--split", choices=["train", "test"], default="test", help="which split's images")
    cli.add_runs(ap)
    ap.add_argument("--out", type=Path, required=True, help="the coordinates CSV to write")
    cli.add_cache_dir(ap)
    cli.add_fold_ids(ap, help="the localizer folds to use (default: every fold found)")
    cli.add_workers(ap)
    a = cli.dataset_defaults(ap.parse_args(argv))
    if not a.runs.is_dir():
        raise DataError(f"{a.runs}: no such runs folder (--runs)")
    cache_dir = cache_dir_for(a.data_dir, a.cache_dir)
    prepare(a.data_dir, cache_dir, a.split, workers=a.workers)
    localizer = Localizer.from_runs(a.runs, a.fold_ids)
    coords = localize(series_table(a.data_dir, a.split), cache_dir, a.split, localizer,
                      workers=loader_workers(a.workers, localizer.device.type))
    write_csv(coords, a.out)
    print(f"wrote {a.out}: {len(coords)} points for {coords['study_id'].nunique()} studies")
    if coords.empty:
        print(f"localize.py: {a.out} holds no point: no localizer under {a.runs} could be used", file=sys.stderr)
        return MODEL_DROPPED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
