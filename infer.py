"""Offline inference for a leaderboard submission:
python infer.py --data-dir DIR [--split test] [--runs runs/] --out submission/submission.csv

Localizes every study (stage 1), cuts crops, runs every fold of every classifier under runs/ with
horizontal-flip TTA, ensembles them (weights and temperatures from runs/ensemble.json when ensemble.py has
written it) and writes every row of sample_submission.csv. Bad input (a corrupt DICOM, a missing series, a
study without images) costs only the rows it touches, which get the training prior. No network is used.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from src.parallel import default_workers  # noqa: E402
from src.paths import RUNS_DIR, SUBMISSION_DIR, SYNTH_DIR, default_cache_dir  # noqa: E402
from src.predict import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=SYNTH_DIR)
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--runs", type=Path, default=RUNS_DIR)
    ap.add_argument("--out", type=Path, default=SUBMISSION_DIR / "submission.csv")
    ap.add_argument("--cache-dir", type=Path, default=None, help="writable; default input/cache/<data-dir name>")
    ap.add_argument("--ensemble", type=Path, default=None, help="default: <runs>/ensemble.json if present")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--workers", type=int, default=default_workers(), help="processes (default: usable CPUs, at most 8)")
    ap.add_argument("--studies", type=int, nargs="+", default=None, help="only these studies' rows")
    ap.add_argument("--explain", type=int, nargs="+", default=None, metavar="STUDY_ID",
                    help="also write a plain-language reading and a PNG sheet of crops and attention for these studies")
    ap.add_argument("--explain-dir", type=Path, default=None, help="default: <out folder>/explain")
    ap.add_argument("--per-model", action="store_true", help="also write submission_{model}.csv per classifier")
    a = ap.parse_args(argv)
    try:
        run(a.data_dir, a.split, a.runs, a.out, a.cache_dir or default_cache_dir(a.data_dir), a.ensemble,
            tta=not a.no_tta, workers=a.workers, studies=a.studies, explain_studies=a.explain,
            explain_dir=a.explain_dir, per_model=a.per_model)
    except Exception as err:  # only when not even the prior could be written
        print(f"infer.py: nothing written: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
