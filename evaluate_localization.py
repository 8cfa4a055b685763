"""Held-out localization report: python evaluate_localization.py --data-dir DIR [--runs runs/<data-dir name>] [--fold-ids N ...]

For each fold: runs that fold's localizers on its held-out training studies and reports, per condition,
median and 95th-percentile error (mm and pixels), the share within 5 mm, on the right slice (+-1) and a
level off, with the confidence of the points a level off and of the others (and every point's error in
<out stem>_errors.csv, which evaluate.py draws per condition). Then, for every classifier
trained on that fold, the out-of-fold competition score with crops cut at the predicted coordinates (with
the flip test-time augmentation, as infer.py runs them) beside the score with the labelled ones; those
predictions are written beside the fold's oof.csv as oof_predicted.csv, which ensemble.py fits the final
stage on.

--split test scores the test split instead, against the data's test_label_coordinates.csv (the synthetic
generator writes it as a hidden answer), with the localizers of every fold given (all by default) run
together as at inference; runs trained on another dataset can be scored there this way. With --coords it
scores that coordinates file instead of localizing again (infer.py writes one beside each submission,
<name>.coordinates.csv, in the same format as localize.py's output).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402

import src.registry  # noqa: E402,F401 - every model registered (the runs listing reads it)
from src.core import cli  # noqa: E402
from src.core.atomic import write_csv, write_json  # noqa: E402
from src.core.device import pick_device  # noqa: E402
from src.core.faults import FaultLog  # noqa: E402
from src.core.metric import fold_prior, overlay, score  # noqa: E402
from src.core.parallel import loader_workers  # noqa: E402
from src.core.paths import cache_dir_for, reports_dir_for  # noqa: E402
from src.core.run_folders import OOF, OOF_PREDICTED, classifier_runs, fold_of, localizer_run, run_dir, trained_folds  # noqa: E402
from src.data.cache import prepare  # noqa: E402
from src.data.folds import fold_solution, load_folds  # noqa: E402
from src.data.tables import DataError, load_coordinates, load_submission, load_train  # noqa: E402
from src.inference.classify import load_members, predict_members  # noqa: E402
from src.inference.context import InferenceContext  # noqa: E402
from src.inference.pipeline import series_table  # noqa: E402
from src.localizer.errors import LEVEL_OFF_MM, point_errors, summarize_errors  # noqa: E402
from src.localizer.infer import Localizer, localize  # noqa: E402
from src.localizer.plan import PLAN  # noqa: E402


def classifier_scores(ctx: InferenceContext, fold: int, predicted: pd.DataFrame, train: pd.DataFrame,
                      folds: pd.DataFrame) -> list[dict]:
    """Each classifier's score on one fold with crops at the labelled (its oof.csv) and the predicted coordinates
    (cut from ctx's cache of the train split); the latter, the fold prior where no crop was cut, are written
    as the fold's oof_predicted.csv."""
    runs = ctx.runs
    solution = fold_solution(train, folds, fold)
    prior = fold_prior(train, folds, solution)
    out = []
    for name in classifier_runs(runs):
        for member in load_members(runs, [name], ctx.device, FaultLog(), [fold]):
            probs = overlay(prior, predict_members(predicted, [member], ctx)[name])
            run = run_dir(runs, name, fold)
            write_csv(probs, run / OOF_PREDICTED)
            out.append({"model": name, "fold": fold, "score_labelled": score(solution, load_submission(run / OOF)),
                        "score_predicted": score(solution, probs)})
    return out


def errors_file(report: Path) -> Path:
    """The per-point errors beside a report JSON (localization.json -> localization_errors.csv), which
    evaluate.py draws as histograms per condition."""
    return report.with_name(f"{report.stem}_errors.csv")


def main(argv: list[str] | None = None) -> dict:
    ap = cli.parser(__doc__)
    cli.add_runs(ap)
    cli.add_data_dir(ap)
    cli.add_folds(ap)
    cli.add_fold_ids(ap, help="the folds to evaluate (default: every fold with a trained localizer)")
    cli.add_cache_dir(ap)
    cli.add_workers(ap)
    ap.add_argument("--out", type=Path, default=None,
                    help="the report JSON to write; default: reports/<data-dir name>/localization[_test].json")
    ap.add_argument("--split", choices=["train", "test"], default="train",
                    help="train: each fold's held-out studies; test: the test split against test_label_coordinates.csv")
    ap.add_argument("--coords", type=Path, default=None,
                    help="with --split test: score these predicted coordinates (infer.py's <submission>.coordinates.csv "
                         "or localize.py's output) instead of running the localizers")
    a = cli.dataset_defaults(ap.parse_args(argv))
    a.out = a.out or reports_dir_for(a.data_dir) / ("localization_test.json" if a.split == "test" else "localization.json")
    if a.split == "test":
        return test_split_report(a)
    if a.coords is not None:
        ap.error("--coords scores the test split: add --split test")
    cache_dir = cache_dir_for(a.data_dir, a.cache_dir)
    device = pick_device()
    train = load_train(a.data_dir / "train.csv")
    folds = load_folds(a.folds)
    truth = load_coordinates(a.data_dir / "train_label_coordinates.csv")
    fold_ids = a.fold_ids or [fold_of(p) for p in trained_folds(a.runs, localizer_run(PLAN[0].series_type))]
    if not fold_ids:
        raise DataError(f"{a.runs}: no trained localizer: run `python train.py --fold N --model localizer` first")
    prepare(a.data_dir, cache_dir, "train", workers=a.workers)
    errors, scores = [], []
    for fold in fold_ids:
        studies = folds.loc[folds["fold"] == fold, "study_id"].tolist()
        localizer = Localizer.from_runs(a.runs, [fold], device)
        predicted = localize(series_table(a.data_dir, "train", studies), cache_dir, "train", localizer,
                             workers=loader_workers(a.workers))
        errors.append(point_errors(predicted, truth[truth["study_id"].isin(studies)], cache_dir, "train"))
        ctx = InferenceContext(a.data_dir, a.runs, cache_dir, "train", device=device)
        scores += classifier_scores(ctx, fold, predicted, train, folds)
    errors = pd.concat(errors, ignore_index=True)
    write_csv(errors, errors_file(a.out))
    table = summarize_errors(errors)
    pd.set_option("display.width", 200)
    print(f"localization on held-out folds {fold_ids}\n{table.round(3).to_string(index=False)}")
    if scores:
        print("\nclassifier out-of-fold score, labelled vs predicted coordinates")
        print(pd.DataFrame(scores).round(4).to_string(index=False))
    report = {"folds": fold_ids, "localization": table.to_dict("records"), "classifiers": scores}
    write_json(report, a.out)
    return report


def test_split_report(a) -> dict:
    """Localization of every test study with the localizers of the folds given (all by default), or the
    coordinates file given."""
    cache_dir = cache_dir_for(a.data_dir, a.cache_dir)
    truth_file = a.data_dir / "test_label_coordinates.csv"
    if not truth_file.is_file():
        raise DataError(f"{truth_file}: no test coordinates to score against (the synthetic generator writes them)")
    truth = load_coordinates(truth_file)
    prepare(a.data_dir, cache_dir, "test", workers=a.workers)
    if a.coords is not None:
        predicted = load_coordinates(a.coords)
    else:
        localizer = Localizer.from_runs(a.runs, a.fold_ids, pick_device())
        predicted = localize(series_table(a.data_dir, "test"), cache_dir, "test", localizer,
                             workers=loader_workers(a.workers))
    errors = point_errors(predicted, truth, cache_dir, "test")
    write_csv(errors, errors_file(a.out))
    table = summarize_errors(errors)
    pd.set_option("display.width", 200)
    print(f"localization on the test split of {a.data_dir} ({errors['study_id'].nunique()} studies)\n"
          f"{table.round(3).to_string(index=False)}")
    off = errors.loc[errors["error_3d_mm"] > LEVEL_OFF_MM, "study_id"].nunique()
    report = {"split": "test", "data_dir": str(a.data_dir), "runs": str(a.runs), "folds": a.fold_ids,
              "coords": None if a.coords is None else str(a.coords),
              "studies": int(errors["study_id"].nunique()), "studies_with_a_point_a_level_off": int(off),
              "localization": table.to_dict("records")}
    print(f"studies with a point a level off: {off} of {report['studies']}")
    write_json(report, a.out)
    return report


if __name__ == "__main__":
    sys.exit(cli.guard(main))
