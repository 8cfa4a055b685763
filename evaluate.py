"""Evaluate every fold's out-of-fold predictions:
python evaluate.py --data-dir DIR [--runs runs/<data-dir name>] [--out-dir reports/<data-dir name>]
python evaluate.py --across reports/A reports/B ... [--out-dir DIR]   (several sets' held-out tables: mean, spread)

Writes <out-dir>/metrics.json and <out-dir>/report.md: the competition score and its parts per model and for
the ensemble, the attention paper's table, the CNN-LSTM paper's classification reports, confusion
matrices, loss/accuracy curves, ROC and precision-recall curves; on synthetic data also the prior's and the
oracle's scores and the share of the learnable signal captured; with --submissions, the held-out table.
"""
from __future__ import annotations

import sys
from pathlib import Path

import src.registry  # noqa: F401 - every model registered (the runs listing reads it)
from src.core import cli
from src.core.atomic import write_csv, write_json
from src.core.paths import reports_dir_for
from src.data.folds import load_folds
from src.data.tables import load_submission, load_train
from src.evaluation.reports import across_lines, across_reports, evaluate, held_out_lines, held_out_table


def main(argv: list[str] | None = None) -> dict:
    ap = cli.parser(__doc__)
    cli.add_runs(ap)
    cli.add_data_dir(ap)
    cli.add_folds(ap)
    ap.add_argument("--out-dir", type=Path, default=None, help="the reports folder; default: reports/<data-dir name>")
    ap.add_argument("--submissions", type=Path, default=None,
                    help="a folder of submission*.csv for the data's test split, scored against test_solution.csv")
    ap.add_argument("--held-out-only", action="store_true",
                    help="score only --submissions on the data's test split (for runs trained on another dataset)")
    ap.add_argument("--across", type=Path, nargs="+", default=None,
                    help="reports folders of several sets (e.g. one per generator seed): their held-out tables' mean "
                         "and spread, written to <out-dir>/across.csv (no --data-dir needed)")
    args = ap.parse_args(argv)
    if args.across:
        summary = across_reports(args.across)
        out = (args.out_dir or Path("reports") / "across") / "across.csv"
        write_csv(summary, out)
        print(f"wrote {out}: mean (spread) over {len(args.across)} reports\n" + "\n".join(across_lines(summary)))
        return {"across": summary.to_dict("records")}
    a = cli.dataset_defaults(args)
    a.out_dir = a.out_dir or reports_dir_for(a.data_dir)
    if a.held_out_only:
        if a.submissions is None:
            ap.error("--held-out-only needs --submissions DIR")
        rows = held_out_table(a.submissions, a.data_dir).to_dict("records")
        write_json({"data_dir": str(a.data_dir), "submissions": str(a.submissions), "test": rows},
                   a.out_dir / "heldout.json")
        print("\n".join(held_out_lines(rows)))
        return {"test": rows}
    oracle_file = a.data_dir / "train_oracle.csv"
    held_out = held_out_table(a.submissions, a.data_dir) if a.submissions is not None else None
    metrics = evaluate(a.runs, load_train(a.data_dir / "train.csv"), load_folds(a.folds), a.out_dir,
                       load_submission(oracle_file) if oracle_file.is_file() else None, held_out)
    print(f"wrote {a.out_dir / 'report.md'} and {a.out_dir / 'metrics.json'}")
    print("\n| submission | out-of-fold score |\n| --- | --- |")
    for name, parts in metrics["scores"].items():
        share = metrics.get("signal_captured", {}).get(name)
        print(f"| {name} | {parts['score']:.4f}" + (f" ({100 * share:.0f}% of signal)" if share is not None else "") + " |")
    if "test" in metrics:
        print("\n" + "\n".join(held_out_lines(metrics["test"])))
    return metrics


if __name__ == "__main__":
    sys.exit(cli.guard(main))
