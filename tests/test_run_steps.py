"""run_steps.py: several scripts in one process, stopping at the first that fails."""
import pytest
from conftest import REPO

import run_steps


def test_steps_split_on_then_and_name_only_this_folders_scripts():
    steps = run_steps.split_steps(["score.py", "--solution", "a.csv", "--then", "evaluate.py", "--then", "ensemble.py", "-x"])
    assert steps == [(REPO / "score.py", ["--solution", "a.csv"]), (REPO / "evaluate.py", []), (REPO / "ensemble.py", ["-x"])]
    for bad, message in ((["score.py", "--then"], "an empty step"), (["nowhere.py"], "'nowhere.py' is not one of"),
                         (["../score.py"], "is not one of"), (["Makefile"], "is not one of"),
                         (["run_steps.py"], "is not one of")):
        with pytest.raises(run_steps.StepError, match=message):
            run_steps.split_steps(bad)


def test_steps_run_in_order_and_the_first_failure_ends_the_run_with_its_code(synth_dir, tmp_path, capsys):
    """score.py steps in this process: the first prints its score; a step with bad input is its own one-line
    error (exit 2) and the steps after it do not run; no step runs when one of them is not a script."""
    from src.core.cli import guard

    solution, train, missing = synth_dir / "test_solution.csv", synth_dir / "train.csv", tmp_path / "missing.csv"
    good = ["score.py", "--solution", str(solution), "--prior", str(train), "--json"]
    assert guard(run_steps.main, [*good, "--then", "nowhere.py"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "'nowhere.py' is not one of" in err
    code = guard(run_steps.main, [*good, "--then", "score.py", "--solution", str(missing), "--prior", str(train),
                                  "--then", *good])
    out, err = capsys.readouterr()
    assert code == 2 and out.count('"score"') == 1  # the first step, not the third
    assert len(err.strip().splitlines()) == 1 and err.startswith("score.py: ") and str(missing) in err
    assert guard(run_steps.main, [*good, "--then", *good]) == 0 and capsys.readouterr().out.count('"score"') == 2
