"""Held-out localization report: python evaluate_localization.py --runs runs/ [--fold N] [--data-dir DIR]

For each fold: runs that fold's localizers on its held-out training studies and reports, per condition,
median and 95th-percentile error (mm and pixels), the share within 5 mm and the share on the right slice
(+-1). Then, for every classifier trained on that fold, the out-of-fold competition score with crops cut
at the predicted coordinates beside the score with the labelled ones.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from src.crops import CropSpec, build_crops  # noqa: E402
from src.folds import fold_solution, load_folds  # noqa: E402
from src.inference import classifier_runs, find_runs, load_model, predict_crops  # noqa: E402
from src.localization import point_errors  # noqa: E402
from src.localize import localize, summarize_errors  # noqa: E402
from src.metric import overlay, prior_submission, score  # noqa: E402
from src.paths import FOLDS_FILE, RUNS_DIR, SYNTH_DIR, default_cache_dir  # noqa: E402
from src.tables import load_coordinates, load_submission, load_train, solution_frame  # noqa: E402


def classifier_scores(runs: Path, fold: int, predicted: pd.DataFrame, data_dir: Path, cache_dir: Path,
                      train: pd.DataFrame, folds: pd.DataFrame, device: torch.device) -> list[dict]:
    solution = fold_solution(train, folds, fold)
    prior = prior_submission(solution_frame(train, folds.loc[folds["fold"] != fold, "study_id"]), solution["row_id"].tolist())
    out = []
    for name in classifier_runs(runs):
        for run in find_runs(runs, name, [fold]):
            model, cfg = load_model(run, device)
            crops, index = build_crops(predicted, cache_dir, "train", CropSpec(**cfg["crop"]), cache_dir / "crops")
            probs = predict_crops(model, cfg, crops, index, device)
            out.append({"model": name, "fold": fold, "score_labelled": score(solution, load_submission(run / "oof.csv")),
                        "score_predicted": score(solution, overlay(prior, probs))})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=RUNS_DIR)
    ap.add_argument("--data-dir", type=Path, default=SYNTH_DIR)
    ap.add_argument("--folds-file", type=Path, default=FOLDS_FILE)
    ap.add_argument("--fold", type=int, nargs="*", default=None, help="default: every fold with trained localizers")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("reports") / "localization.json")
    a = ap.parse_args(argv)
    cache_dir = a.cache_dir or default_cache_dir(a.data_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = load_train(a.data_dir / "train.csv")
    folds = load_folds(a.folds_file)
    truth = load_coordinates(a.data_dir / "train_label_coordinates.csv")
    fold_ids = a.fold if a.fold else sorted({int(p.name[4:]) for p in find_runs(a.runs, "localizer_sagittal_t2")})
    if not fold_ids:
        raise SystemExit(f"no trained localizer under {a.runs}: run `python train.py --fold N --model localizer` first")
    errors, scores = [], []
    for fold in fold_ids:
        studies = folds.loc[folds["fold"] == fold, "study_id"].tolist()
        predicted = localize(a.data_dir, "train", a.runs, cache_dir, studies, folds=[fold], device=device)
        errors.append(point_errors(predicted, truth[truth["study_id"].isin(studies)], cache_dir, "train"))
        scores += classifier_scores(a.runs, fold, predicted, a.data_dir, cache_dir, train, folds, device)
    table = summarize_errors(pd.concat(errors, ignore_index=True))
    pd.set_option("display.width", 200)
    print(f"localization on held-out folds {fold_ids}\n{table.round(3).to_string(index=False)}")
    if scores:
        print("\nclassifier out-of-fold score, labelled vs predicted coordinates")
        print(pd.DataFrame(scores).round(4).to_string(index=False))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"folds": fold_ids, "localization": table.to_dict("records"), "classifiers": scores}
    a.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
