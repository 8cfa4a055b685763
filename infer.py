"""Offline inference for a leaderboard submission:
python infer.py --data-dir DIR [--split test] [--runs runs/<data-dir name>] [--out submission/<data-dir name>/submission.csv]

Localizes every study (stage 1), cuts crops, runs every fold of every classifier under runs/ with
horizontal-flip TTA, ensembles them (weights and temperatures from runs/ensemble.json when ensemble.py has
written it) and writes every row of sample_submission.csv. No network is used.

A fault costs only what it touches: a bad study (corrupt DICOM, missing series, bad CSV line) its own rows,
a checkpoint that does not load its fold, a member without folds its place in the ensemble (the others are
renormalised), a localizer its series type. The rows nothing reached get the training prior. Every
degradation is named in one summary at the end and in <out>.faults.json beside the submission.

Exit codes: 0 the submission is written (with --strict: and every model was used); 1 nothing could be
written; 2 bad command line, a missing data or runs folder or an input file named on it; 4 the submission was
written, but a file written after it (the coordinates, the faults, a per-model submission, an explanation)
failed;
3 written, but no model could be used (every row is the prior; also without --strict), or (--strict only) a
fold, member or localizer was dropped, an ensemble entry or a series' geometry fell back, or some predictions
were invalid.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from src.versions import version_problems  # noqa: E402  (before anything that imports them)

if version_problems():
    sys.exit(f"infer.py: packages too old or missing: {'; '.join(version_problems())}; install the pinned wheels "
             "(requirements.txt, or the notebook's wheels dataset)")

import src.registry  # noqa: E402,F401 - every model registered (the runs listing reads it)
from src.core import cli  # noqa: E402
from src.core.faults import MODEL_DROPPED_EXIT, FaultLog  # noqa: E402
from src.core.paths import cache_dir_for, submission_dir_for  # noqa: E402
from src.data.tables import DataError, load_coordinates  # noqa: E402
from src.evaluation.explain import explain  # noqa: E402
from src.inference.context import InferenceContext  # noqa: E402
from src.inference.pipeline import coordinates_path, make_submission  # noqa: E402

WRITTEN_BUT_EXTRA_FAILED_EXIT = 4


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser(__doc__)
    cli.add_data_dir(ap)
    ap.add_argument("--split", choices=["train", "test"], default="test", help="which split's images")
    cli.add_runs(ap)
    ap.add_argument("--out", type=Path, default=None,
                    help="the submission CSV to write; default: submission/<data-dir name>/submission.csv")
    cli.add_cache_dir(ap)
    ap.add_argument("--ensemble", type=Path, default=None, help="the ensemble file; default: <runs>/ensemble.json if present")
    ap.add_argument("--no-tta", action="store_true", help="no horizontal-flip test-time augmentation")
    ap.add_argument("--no-test-views", action="store_true",
                    help="each point read on its own series only, whatever the members' test_views say")
    cli.add_workers(ap)
    ap.add_argument("--batch-studies", type=int, default=8,
                    help="studies per batch through the models (lower it if the GPU or RAM runs out)")
    ap.add_argument("--studies", type=int, nargs="+", default=None, help="only these studies' rows")
    ap.add_argument("--explain", type=int, nargs="+", default=None, metavar="STUDY_ID",
                    help="also write a plain-language reading and a PNG sheet of crops and attention for these studies")
    ap.add_argument("--explain-dir", type=Path, default=None, help="the explanations' folder; default: <out folder>/explain")
    ap.add_argument("--per-model", action="store_true", help="also write submission_{model}.csv per classifier")
    ap.add_argument("--at-points", type=Path, default=None, metavar="CSV",
                    help="cut the crops at this table's points (train_label_coordinates.csv's format, e.g. the test "
                         "split's labelled points) instead of localizing: what the classifiers score without stage 1")
    ap.add_argument("--slice-sd-mm", type=float, default=None, metavar="MM",
                    help="how far (sd, mm) a foramen's or an axial level's depth may be from where it was read: its "
                         "crop is also cut on the neighbouring slice on that side and the two predictions averaged by "
                         "the chance that the point lies nearer it (default 1.0; 0: one slice per point, about 0.6x the "
                         "classification time)")
    ap.add_argument("--strict", action="store_true",
                    help=f"exit {MODEL_DROPPED_EXIT} (submission still written) when any fold, member or localizer was "
                         "dropped, an ensemble entry or a series' geometry fell back, or no model was used")
    a = cli.dataset_defaults(ap.parse_args(argv))
    if not a.data_dir.is_dir():
        raise DataError(f"{a.data_dir}: no such data folder (--data-dir)")
    if not a.runs.is_dir():
        raise DataError(f"{a.runs}: no such runs folder (--runs)")
    a.out = a.out or submission_dir_for(a.data_dir) / "submission.csv"
    if a.slice_sd_mm is not None and not a.slice_sd_mm >= 0:
        raise DataError(f"--slice-sd-mm {a.slice_sd_mm}: must be 0 or more")
    if a.at_points is not None:
        load_coordinates(a.at_points)  # a bad table is one line now, not a submission of priors later
    faults = FaultLog()
    started = time.time()
    try:
        ctx = InferenceContext(a.data_dir, a.runs, cache_dir_for(a.data_dir, a.cache_dir), a.split, a.out,
                               tta=not a.no_tta, test_views=not a.no_test_views, workers=a.workers,
                               studies_per_batch=a.batch_studies, ensemble_path=a.ensemble, per_model=a.per_model,
                               faults=faults, points=a.at_points, slice_sd_mm=a.slice_sd_mm)
        submission = make_submission(ctx, studies=a.studies)
    except Exception as err:  # only when not even the prior could be written, or a file after it failed
        if a.debug:
            raise
        if a.out.is_file() and a.out.stat().st_mtime >= started:
            print(f"infer.py: {a.out} was written (every row), but a later file failed: {type(err).__name__}: {err}",
                  file=sys.stderr)
            return WRITTEN_BUT_EXTRA_FAILED_EXIT
        print(f"infer.py: nothing written: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if a.explain and not _explained(a, ctx, submission):
        return WRITTEN_BUT_EXTRA_FAILED_EXIT
    if faults.of("output"):
        print(f"infer.py: {a.out} was written (every row), but a file beside it failed (see the summary)", file=sys.stderr)
        return WRITTEN_BUT_EXTRA_FAILED_EXIT
    if faults.of("models"):  # never a silent submission of priors, --strict or not
        print(f"infer.py: {a.out} holds the training prior in every row: no model under {a.runs} could be used "
              "(see the summary)", file=sys.stderr)
        return MODEL_DROPPED_EXIT
    return MODEL_DROPPED_EXIT if a.strict and faults.model_dropped else 0


def _explained(a, ctx: InferenceContext, submission) -> bool:
    """The explanations of --explain, from the written submission and its coordinates; False (said in one
    line) when they fail: the submission itself is complete."""
    try:
        coords = pd.read_csv(coordinates_path(a.out))
        explain(a.explain, coords, submission, ctx, a.explain_dir or a.out.parent / "explain")
    except Exception as err:  # noqa: BLE001 - the submission is already written
        if a.debug:
            raise
        print(f"infer.py: {a.out} was written (every row), but the explanations failed: {type(err).__name__}: {err}",
              file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(cli.guard(main))
