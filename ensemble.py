"""Fit the ensemble on out-of-fold predictions: python ensemble.py --data-dir DIR [--runs runs/<data-dir name>]

Every folder under --runs holding a trained classifier takes part (the two models, and any experiment run
with `train.py --name`), unless --names picks some. Writes <runs>/ensemble.json: a weight per run and a
temperature per condition group (fitted against the competition metric on every fold's oof.csv) and the
training prior; infer.py reads it and blends the runs it names.
"""
from __future__ import annotations

import sys
from pathlib import Path

import src.registry  # noqa: F401 - every model registered (the runs listing reads it)
from src.core import cli
from src.core.atomic import write_json
from src.core.metric import prior_table, solution_frame
from src.core.run_folders import ensemble_file
from src.data.tables import DataError, load_train
from src.inference import ensemble as ensemble_lib
from src.inference.stacker import fit_stacker, nested_scores


def main(argv: list[str] | None = None) -> dict:
    ap = cli.parser(__doc__)
    cli.add_runs(ap)
    cli.add_data_dir(ap)
    ap.add_argument("--out", type=Path, default=None, help="the ensemble file; default: <runs>/ensemble.json")
    ap.add_argument("--names", nargs="+", default=None,
                    help="the classifier runs (folders under --runs) to blend; default: every one with an oof.csv")
    ap.add_argument("--stacker", action="store_true",
                    help="also fit the metric-fitted stacker (src/stacker.py) and report its nested-fold score beside "
                         "the weighted ensemble's; infer.py then applies it")
    ap.add_argument("--stacker-context", action="store_true",
                    help="with --stacker: each row also sees the rest of its study (the same condition's other "
                         "levels, the study's most severe spinal level)")
    a = cli.dataset_defaults(ap.parse_args(argv))
    frames = ensemble_lib.collect_oof(a.runs, a.names)
    if not frames:
        raise DataError(f"{a.runs}: no oof.csv of a trained classifier: train some folds first")
    solution = solution_frame(load_train(a.data_dir / "train.csv"))
    fitted = ensemble_lib.fit_ensemble(frames, solution)
    fitted["prior"] = prior_table(solution)
    if a.stacker:
        fitted["stacker_nested"] = nested_scores(frames, solution, context=a.stacker_context)
        fitted["stacker"] = fit_stacker(frames, solution, context=a.stacker_context)
        print(f"stacker: nested {fitted['stacker_nested']['folds']}-fold OOF score {fitted['stacker_nested']['stacker']:.4f} "
              f"against {fitted['stacker_nested']['ensemble']:.4f} for weights and temperatures fitted the same way")
    out = a.out or ensemble_file(a.runs)
    write_json(fitted, out)
    print(f"wrote {out}: OOF score {fitted['oof_score']:.4f} on {fitted['rows']} rows "
          f"(single models: {', '.join(f'{k} {v:.4f}' for k, v in fitted['oof_single'].items())})")
    print("weights", {k: round(v, 3) for k, v in fitted["weights"].items()},
          "temperature", {k: round(v, 3) for k, v in fitted["temperature"].items()})
    return fitted


if __name__ == "__main__":
    sys.exit(cli.guard(main))
