"""Score a submission: python score.py --solution S --submission P  (or --prior TRAIN_CSV for the floor)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from src.core import cli
from src.core.constants import SCORE_PARTS  # noqa: E402
from src.core.metric import prior_submission, score_parts, solution_frame
from src.data.tables import load_solution, load_submission, load_train


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = cli.parser(__doc__)
    ap.add_argument("--solution", type=Path, required=True, help="row_id, one-hot targets, sample_weight")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--submission", type=Path, help="row_id, normal_mild, moderate, severe")
    what.add_argument("--prior", type=Path, metavar="TRAIN_CSV", help="score the constant prior fitted on this train.csv")
    ap.add_argument("--json", action="store_true", help="print the parts as JSON")
    a = ap.parse_args(argv)
    solution = load_solution(a.solution)
    if a.prior is not None:
        submission = prior_submission(solution_frame(load_train(a.prior)), solution["row_id"].tolist())
        name = f"prior from {a.prior}"
    else:
        submission = load_submission(a.submission)
        name = str(a.submission)
    parts = score_parts(solution, submission)
    if a.json:
        print(json.dumps(parts))
    else:
        print(f"{name}: score {parts['score']:.4f}")
        for part in SCORE_PARTS:
            print(f"  {part:<18} {parts[part]:.4f}")
    return parts


if __name__ == "__main__":
    sys.exit(cli.guard(main))
