"""Evaluate every fold's out-of-fold predictions: python evaluate.py --runs runs/ [--data-dir DIR] [--out reports/]

Writes reports/metrics.json and reports/report.md: the competition score and its parts per model and for
the ensemble, the attention paper's table, the CNN-LSTM paper's classification reports, confusion
matrices, loss/accuracy curves, ROC and precision-recall curves; on synthetic data also the prior's and the
oracle's scores and the share of the learnable signal captured.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.evaluation import evaluate, test_table
from src.folds import load_folds
from src.paths import FOLDS_FILE, REPO, RUNS_DIR, SYNTH_DIR
from src.tables import load_submission, load_train


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=RUNS_DIR)
    ap.add_argument("--data-dir", type=Path, default=SYNTH_DIR)
    ap.add_argument("--folds", type=Path, default=FOLDS_FILE)
    ap.add_argument("--out", type=Path, default=REPO / "reports")
    ap.add_argument("--submissions", type=Path, default=None,
                    help="a folder of submission*.csv for the data's test split, scored against test_solution.csv")
    a = ap.parse_args(argv)
    oracle_file = a.data_dir / "train_oracle.csv"
    metrics = evaluate(a.runs, load_train(a.data_dir / "train.csv"), load_folds(a.folds), a.out,
                       load_submission(oracle_file) if oracle_file.is_file() else None)
    print(f"wrote {a.out / 'report.md'} and {a.out / 'metrics.json'}")
    print("\n| submission | out-of-fold score |\n| --- | --- |")
    for name, parts in metrics["scores"].items():
        share = metrics.get("signal_captured", {}).get(name)
        print(f"| {name} | {parts['score']:.4f}" + (f" ({100 * share:.0f}% of signal)" if share is not None else "") + " |")
    if a.submissions is not None:
        table = test_table(a.submissions, a.data_dir)
        metrics["test"] = table.to_dict("records")
        lines = ["", "## Held-out test split", "", "| submission | score | share of learnable signal |", "| --- | --- | --- |"]
        lines += [f"| {r['submission']} | {r['score']:.4f} | {100 * r.get('signal_captured', float('nan')):.0f}% |"
                  for r in metrics["test"]]
        with open(a.out / "report.md", "a") as f:
            f.write("\n".join(lines) + "\n")
        (a.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        print("\n".join(lines[1:]))
    return metrics


if __name__ == "__main__":
    main()
