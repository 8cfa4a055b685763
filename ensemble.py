"""Fit the ensemble on out-of-fold predictions: python ensemble.py --runs runs/ [--data-dir DIR]

Every folder under --runs holding a trained classifier takes part (the two models, and any experiment run
with `train.py --name`), unless --names picks some. Writes <runs>/ensemble.json: a weight per run and a
temperature per condition group (fitted against the competition metric on every fold's oof.csv) and the
training prior; infer.py reads it and blends the runs it names.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from src import ensemble as ensemble_lib
from src.paths import RUNS_DIR, SYNTH_DIR
from src.tables import load_train, solution_frame


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=RUNS_DIR)
    ap.add_argument("--data-dir", type=Path, default=SYNTH_DIR, help="holds the train.csv the OOF is scored on")
    ap.add_argument("--out", type=Path, default=None, help="default: <runs>/ensemble.json")
    ap.add_argument("--names", nargs="+", default=None,
                    help="the classifier runs (folders under --runs) to blend; default: every one with an oof.csv")
    a = ap.parse_args(argv)
    frames = ensemble_lib.collect_oof(a.runs, a.names)
    if not frames:
        raise SystemExit(f"no oof.csv under {a.runs}: train some folds first")
    solution = solution_frame(load_train(a.data_dir / "train.csv"))
    fitted = ensemble_lib.fit(frames, solution)
    fitted["prior"] = ensemble_lib.prior_table(solution)
    out = a.out or a.runs / "ensemble.json"
    out.write_text(json.dumps(fitted, indent=1))
    print(f"wrote {out}: OOF score {fitted['oof_score']:.4f} on {fitted['rows']} rows "
          f"(single models: {', '.join(f'{k} {v:.4f}' for k, v in fitted['oof_single'].items())})")
    print("weights", {k: round(v, 3) for k, v in fitted["weights"].items()},
          "temperature", {k: round(v, 3) for k, v in fitted["temperature"].items()})
    return fitted


if __name__ == "__main__":
    main()
