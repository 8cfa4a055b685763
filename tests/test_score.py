import json

import pytest

import score as score_script


def test_score_cli_oracle_and_prior(synth_dir, capsys):
    solution = str(synth_dir / "test_solution.csv")
    oracle = score_script.main(["--solution", solution, "--submission", str(synth_dir / "test_oracle.csv")])
    out = capsys.readouterr().out
    assert "score" in out and "any_severe_spinal" in out
    prior = score_script.main(["--solution", solution, "--prior", str(synth_dir / "train.csv"), "--json"])
    parts = json.loads(capsys.readouterr().out)
    assert parts["score"] == pytest.approx(prior["score"]) and oracle["score"] < prior["score"]
