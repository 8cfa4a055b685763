"""The final stage is validated before it is used: nested folds by study decide between it and the plain mean."""
import numpy as np
import pandas as pd
import pytest

from src.core import config as config_lib
from src.core.constants import TARGETS
from src.core.metric import score
from src.core.run_folders import OOF, OOF_PREDICTED
from src.inference.ensemble import fit_ensemble
from src.inference.final_stage import choose, nested_scores, stage_predictions

COLUMNS = ["spinal_canal_stenosis_l1_l2", "left_neural_foraminal_narrowing_l4_l5", "right_subarticular_stenosis_l5_s1"]


def _solution(rng, n_studies: int) -> tuple[pd.DataFrame, np.ndarray]:
    ids = [f"{s}_{c}" for s in range(1, n_studies + 1) for c in COLUMNS]
    truth = rng.choice(3, len(ids), p=[0.7, 0.2, 0.1])
    solution = pd.DataFrame(np.eye(3)[truth], columns=list(TARGETS))
    solution.insert(0, "row_id", ids)
    solution["sample_weight"] = np.array([1.0, 2.0, 4.0])[truth]
    return solution, np.eye(3)[truth]


def _calibrated(rng, n_studies: int, members: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Labels drawn from a known probability per row, and exchangeable members: that probability with noise
    of their own in log space (so the plain mean is what an ensemble should be)."""
    ids = [f"{s}_{c}" for s in range(1, n_studies + 1) for c in COLUMNS]
    p = rng.dirichlet([3.0, 1.0, 0.5], len(ids))
    truth = np.array([rng.choice(3, p=row) for row in p])
    solution = pd.DataFrame(np.eye(3)[truth], columns=list(TARGETS))
    solution.insert(0, "row_id", ids)
    solution["sample_weight"] = np.array([1.0, 2.0, 4.0])[truth]
    frames = {m: _member(solution, np.exp(np.log(p) + rng.normal(0, 0.1, p.shape))) for m in members}
    return solution, frames


def _member(solution: pd.DataFrame, p: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(p / p.sum(1, keepdims=True), columns=list(TARGETS))
    frame.insert(0, "row_id", solution["row_id"].to_numpy())
    return frame


def test_a_stage_that_pays_its_way_is_kept():
    rng = np.random.default_rng(0)
    solution, onehot = _solution(rng, 80)
    frames = {"good": _member(solution, 0.6 * onehot + 0.4 * rng.dirichlet([1, 1, 1], len(onehot))),
              "noise": _member(solution, rng.dirichlet([1, 1, 1], len(onehot)))}
    fitted = choose(frames, solution, "weights", k=4)
    report = fitted["final_stage"]
    assert report["chosen"] == "weights" and report["scores"]["weights"] < report["scores"]["mean"]
    assert fitted["weights"]["good"] > 0.7 and "beats the plain mean" in report["why"] and report["gain_p10"] > 0
    assert report["studies"] == 80 and report["rows"] == len(solution) and report["folds"] == 4


def test_two_exchangeable_members_on_few_studies_get_the_plain_mean():
    solution, frames = _calibrated(np.random.default_rng(1), 24, ("a", "b"))
    fitted = choose(frames, solution, "weights", k=4)
    report = fitted["final_stage"]
    # here the fitted weights' nested score is a little better, but no more than the luck of the 24 studies
    assert report["chosen"] == "mean" and report["gain_p10"] <= 0
    assert "which does not beat the plain mean's" in report["why"] and "by more than luck" in report["why"]
    assert fitted["weights"] == {"a": 0.5, "b": 0.5} and fitted["temperature"] == {}
    # the plain mean's nested score is its plain score on the same rows: nothing is fitted
    mean = (frames["a"][list(TARGETS)].to_numpy() + frames["b"][list(TARGETS)].to_numpy()) / 2
    assert report["scores"]["mean"] == pytest.approx(score(solution, _member(solution, mean)))


def test_nested_scores_fit_on_other_studies_only():
    solution, frames = _calibrated(np.random.default_rng(2), 30, ("a", "b"))
    in_sample = fit_ensemble(frames, solution)["oof_score"]
    assert nested_scores(frames, solution, ("weights",), k=3)["scores"]["weights"] > in_sample


def test_shrink_pulls_weights_and_temperatures_to_the_mean():
    rng = np.random.default_rng(3)
    solution, onehot = _solution(rng, 60)
    frames = {"good": _member(solution, (0.6 * onehot + 0.4 * rng.dirichlet([1, 1, 1], len(onehot))) ** 3),
              "noise": _member(solution, rng.dirichlet([1, 1, 1], len(onehot)))}
    free, pulled = fit_ensemble(frames, solution), fit_ensemble(frames, solution, shrink=10.0)
    assert abs(pulled["weights"]["good"] - 0.5) < abs(free["weights"]["good"] - 0.5)
    assert all(abs(np.log(pulled["temperature"][g])) < abs(np.log(free["temperature"][g])) + 1e-6
               for g in free["temperature"])


def test_the_stage_is_fitted_on_what_test_time_sees_when_every_fold_has_it(tmp_path):
    rng = np.random.default_rng(4)
    solution, onehot = _solution(rng, 10)
    for fold in (0, 1):
        run = tmp_path / "attn_resnext" / f"fold{fold}"
        run.mkdir(parents=True)
        (run / "best.pt").write_bytes(b"")
        config_lib.save(config_lib.resolve("attn_resnext"), run / "config.yaml")
        part = solution.iloc[fold::2]
        _member(part, onehot[fold::2] + 1).to_csv(run / OOF, index=False)
    assert stage_predictions(tmp_path)[0] == OOF  # no fold has its predicted-point predictions yet
    (tmp_path / "attn_resnext" / "fold0" / OOF_PREDICTED).write_text((tmp_path / "attn_resnext" / "fold0" / OOF).read_text())
    assert stage_predictions(tmp_path)[0] == OOF  # one fold lacks them: the labelled-point predictions for all
    (tmp_path / "attn_resnext" / "fold1" / OOF_PREDICTED).write_text((tmp_path / "attn_resnext" / "fold1" / OOF).read_text())
    source, frames = stage_predictions(tmp_path)
    assert source == OOF_PREDICTED and len(frames["attn_resnext"]) == len(solution)


def test_the_recipe_names_the_final_stage(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: tiny\nensemble: {stage: stacker, nested_folds: 3}\n")
    assert config_lib.ensemble_settings(recipe) == {"stage": "stacker", "nested_folds": 3, "shrink": 0.02}
    assert config_lib.ensemble_settings(None)["stage"] == "weights"
    recipe.write_text("ensemble: {stage: blend}\n")
    with pytest.raises(config_lib.ConfigError, match="ensemble.stage: expected one of mean, weights, stacker"):
        config_lib.ensemble_settings(recipe)
    recipe.write_text("ensemble: {stages: mean}\n")
    with pytest.raises(config_lib.ConfigError, match="unknown config key 'ensemble.stages'"):
        config_lib.ensemble_settings(recipe)
