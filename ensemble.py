"""Fit the final stage on out-of-fold predictions: python ensemble.py --data-dir DIR [--runs runs/<data-dir name>]
[--config configs/....yaml] [--stage mean|weights|stacker|stacker_context]

Every folder under --runs holding a trained classifier takes part (the models, and any experiment run with
`train.py --name`), unless --names picks some. The stage is fitted on each member's oof_predicted.csv (crops at
the points its fold's localizers predict, as test time sees them; evaluate_localization.py writes them) where
every fold has one, else on oof.csv. The stage the recipe asks for (its `ensemble:` section, or --stage) is kept
only where its score by nested folds over the studies beats the plain mean's; else ensemble.json holds the plain
mean (equal weights, temperature 1) and says why, with both nested scores (its `final_stage`). It also holds the
training prior; infer.py reads it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import src.registry  # noqa: F401 - every model registered (the runs listing reads it)
from src.core import cli
from src.core import config as config_lib
from src.core.atomic import write_json
from src.core.metric import prior_table, solution_frame
from src.core.run_folders import ensemble_file
from src.data.tables import DataError, load_train
from src.inference.final_stage import choose, stage_predictions


def main(argv: list[str] | None = None) -> dict:
    ap = cli.parser(__doc__)
    cli.add_runs(ap)
    cli.add_data_dir(ap)
    ap.add_argument("--out", type=Path, default=None, help="the ensemble file; default: <runs>/ensemble.json")
    ap.add_argument("--names", nargs="+", default=None,
                    help="the classifier runs (folders under --runs) to blend; default: every one with an oof.csv")
    ap.add_argument("--config", default=None, help="a recipe whose `ensemble:` section names the final stage")
    ap.add_argument("--stage", choices=config_lib.ENSEMBLE_STAGES, default=None,
                    help="the final stage to fit and validate (default: the recipe's, else weights)")
    ap.add_argument("--stacker", action="store_true", help="the same as --stage stacker")
    ap.add_argument("--stacker-context", action="store_true",
                    help="the same as --stage stacker_context: each row also sees the rest of its study (the same "
                         "condition's other levels, the study's most severe spinal level)")
    a = cli.dataset_defaults(ap.parse_args(argv))
    settings = config_lib.ensemble_settings(a.config)
    stage = a.stage or ("stacker_context" if a.stacker_context else "stacker" if a.stacker else settings["stage"])
    source, frames = stage_predictions(a.runs, a.names)
    if not frames:
        raise DataError(f"{a.runs}: no oof.csv of a trained classifier: train some folds first")
    solution = solution_frame(load_train(a.data_dir / "train.csv"))
    fitted = choose(frames, solution, stage, int(settings["nested_folds"]), shrink=float(settings["shrink"]))
    fitted["final_stage"]["source"] = source
    fitted["prior"] = prior_table(solution)
    out = a.out or ensemble_file(a.runs)
    write_json(fitted, out)
    report = fitted["final_stage"]
    nested = ", ".join(f"{k} {v:.4f}" for k, v in report["scores"].items())
    print(f"wrote {out}: {report['chosen']} ({report['why']}); nested {report['folds']}-fold scores on "
          f"{report['studies']} studies of {source}: {nested}")
    print(f"in sample {report['in_sample']:.4f} on {report['rows']} rows (single models: "
          f"{', '.join(f'{k} {v:.4f}' for k, v in report['single'].items())}); weights",
          {k: round(v, 3) for k, v in fitted["weights"].items()},
          "temperature", {k: round(v, 3) for k, v in fitted["temperature"].items()})
    return fitted


if __name__ == "__main__":
    sys.exit(cli.guard(main))
