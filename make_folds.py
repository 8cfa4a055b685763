"""Write patient-stratified folds: python make_folds.py --data-dir DIR --n-folds 5 --seed 42 [--out folds/folds.csv]"""
from __future__ import annotations

import argparse
from pathlib import Path

from src.folds import fold_class_counts, make_folds, max_share_deviation, onehot_labels
from src.paths import FOLDS_FILE, SYNTH_DIR
from src.tables import load_train


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=SYNTH_DIR, help="folder holding train.csv")
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=FOLDS_FILE)
    ap.add_argument("--tolerance", type=float, default=0.006, help="largest share gap left by balancing")
    ap.add_argument("--no-balance", action="store_true", help="keep iterative stratification's folds as they are")
    a = ap.parse_args(argv)
    train = load_train(a.data_dir / "train.csv")
    folds = make_folds(train, a.n_folds, a.seed, None if a.no_balance else a.tolerance)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(a.out, index=False)
    gap = max_share_deviation(onehot_labels(train), folds["fold"].to_numpy())
    print(f"wrote {a.out}: {len(folds)} studies in {a.n_folds} folds; largest class-share gap {100 * gap:.2f} points")
    print(fold_class_counts(train, folds).to_string())


if __name__ == "__main__":
    main()
