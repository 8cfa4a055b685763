"""Write patient-stratified folds:
python make_folds.py --data-dir DIR --n-folds 5 --seed 42 [--out folds/<data-dir name>/folds.csv]"""
from __future__ import annotations

import sys
from pathlib import Path

from src.core import cli
from src.core.atomic import write_csv
from src.core.paths import folds_file_for
from src.data.folds import fold_class_counts, make_folds, max_share_deviation, onehot_labels
from src.data.tables import load_train


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    cli.add_data_dir(ap)
    ap.add_argument("--n-folds", type=int, default=5, help="how many folds")
    ap.add_argument("--seed", type=int, default=42, help="random seed of the stratification")
    ap.add_argument("--out", type=Path, default=None, help="the folds file to write; default: folds/<data-dir name>/folds.csv")
    ap.add_argument("--tolerance", type=float, default=0.006, help="largest share gap left by balancing")
    ap.add_argument("--no-balance", action="store_true", help="keep iterative stratification's folds as they are")
    a = ap.parse_args(argv)
    a.out = folds_file_for(a.data_dir, a.out)
    train = load_train(a.data_dir / "train.csv")
    folds = make_folds(train, a.n_folds, a.seed, None if a.no_balance else a.tolerance)
    write_csv(folds, a.out)
    gap = max_share_deviation(onehot_labels(train), folds["fold"].to_numpy())
    print(f"wrote {a.out}: {len(folds)} studies in {a.n_folds} folds; largest class-share gap {100 * gap:.2f} points")
    print(fold_class_counts(train, folds).to_string())


if __name__ == "__main__":
    sys.exit(cli.guard(main))
