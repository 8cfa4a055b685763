import numpy as np
import pandas as pd
import pytest

from src.core.constants import TARGETS
from src.core.metric import MetricError, expected_score_parts, log_loss, prior_submission, score, score_parts

ROWS = [
    # row_id, true class
    ("1_spinal_canal_stenosis_l1_l2", 0),
    ("1_spinal_canal_stenosis_l2_l3", 2),
    ("2_spinal_canal_stenosis_l1_l2", 1),
    ("1_left_neural_foraminal_narrowing_l1_l2", 0),
    ("2_right_neural_foraminal_narrowing_l4_l5", 1),
    ("1_left_subarticular_stenosis_l5_s1", 2),
    ("2_right_subarticular_stenosis_l3_l4", 0),
]
PRED = np.array(
    [[0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1], [0.9, 0.05, 0.05], [0.4, 0.4, 0.2], [0.25, 0.25, 0.5], [0.6, 0.3, 0.1]]
)


def _frames(pred=PRED):
    labels = np.array([c for _, c in ROWS])
    sol = pd.DataFrame(np.eye(3)[labels], columns=list(TARGETS))
    sol.insert(0, "row_id", [r for r, _ in ROWS])
    sol["sample_weight"] = np.array([1.0, 2.0, 4.0])[labels]
    sub = pd.DataFrame(pred, columns=list(TARGETS))
    sub.insert(0, "row_id", [r for r, _ in ROWS])
    return sol, sub


def test_parts_by_hand():
    sol, sub = _frames()
    parts = score_parts(sol, sub)
    # spinal: rows 0-2, weights 1, 4, 2; true-class probabilities 0.7, 0.5, 0.6
    spinal = -(1 * np.log(0.7) + 4 * np.log(0.5) + 2 * np.log(0.6)) / 7
    foraminal = -(1 * np.log(0.9) + 2 * np.log(0.4)) / 3
    subarticular = -(4 * np.log(0.5) + 1 * np.log(0.6)) / 5
    # any severe: study 1 label 1 (row 1 severe), weight 4, prediction max(0.1, 0.5) = 0.5;
    # study 2 label 0, weight 2, prediction 0.1
    any_severe = -(4 * np.log(0.5) + 2 * np.log(0.9)) / 6
    assert parts["spinal"] == pytest.approx(spinal)
    assert parts["foraminal"] == pytest.approx(foraminal)
    assert parts["subarticular"] == pytest.approx(subarticular)
    assert parts["any_severe_spinal"] == pytest.approx(any_severe)
    assert parts["score"] == pytest.approx((spinal + foraminal + subarticular + any_severe) / 4)
    assert score(sol, sub, "row_id", 2.0) == pytest.approx((spinal + foraminal + subarticular + 2 * any_severe) / 5)


def test_log_loss_is_sklearns_to_the_last_bit():
    from sklearn.metrics import log_loss as sklearn_log_loss

    rng = np.random.default_rng(0)
    for k in (2, 3):
        for n in (1, 7, 500):
            prob = rng.dirichlet(np.ones(k), n)
            prob[rng.random(n) < 0.2] = np.eye(k)[0]  # certain rows: the clip to [eps, 1 - eps] matters
            label, weight = rng.integers(0, k, n), rng.choice([1.0, 2.0, 4.0], n)
            ours = log_loss(label, prob[:, 1] if k == 2 else prob, weight)
            theirs = sklearn_log_loss(label, prob[:, 1] if k == 2 else prob, sample_weight=weight, labels=list(range(k)))
            assert ours == theirs


def test_rows_renormalised_and_order_free():
    sol, sub = _frames()
    base = score_parts(sol, sub)
    scaled = sub.copy()
    scaled[list(TARGETS)] *= 3.0
    parts = score_parts(sol, scaled.iloc[::-1])
    for g in ("spinal", "foraminal", "subarticular"):
        assert parts[g] == pytest.approx(base[g])


def test_uniform_prediction_gives_log3_per_group():
    sol, sub = _frames(np.full((len(ROWS), 3), 1 / 3))
    parts = score_parts(sol, sub)
    for g in ("spinal", "foraminal", "subarticular"):
        assert parts[g] == pytest.approx(np.log(3))


def test_single_class_group_still_scores():
    sol, sub = _frames()
    sol = sol[~sol["row_id"].str.contains("2_spinal|1_spinal_canal_stenosis_l2")]  # spinal: only class 0 left
    sub = sub.copy()
    assert np.isfinite(score_parts(sol, sub)["spinal"])


@pytest.mark.parametrize(
    "bad, message",
    [(np.nan, "non-finite"), (np.inf, "non-finite"), (-0.1, "negative"), ("x", "not numeric")],
)
def test_bad_predictions_raise(bad, message):
    sol, sub = _frames()
    sub = sub.astype({"moderate": object})
    sub.loc[2, "moderate"] = bad
    if bad != "x":
        sub["moderate"] = sub["moderate"].astype(float)
    with pytest.raises(MetricError, match=message):
        score(sol, sub)


def test_missing_row_raises_extra_row_ignored():
    sol, sub = _frames()
    with pytest.raises(MetricError, match="lacks 1 scored row"):
        score(sol, sub.iloc[1:])
    extra = pd.concat([sub, pd.DataFrame([["9_spinal_canal_stenosis_l1_l2", 1, 0, 0]], columns=sub.columns)])
    assert score(sol, extra) == pytest.approx(score(sol, sub))


def test_a_group_without_rows_raises():
    sol, sub = _frames()
    no_recess = ~sol.row_id.str.contains("subarticular")
    with pytest.raises(MetricError, match="solution has no 'subarticular' rows"):
        score(sol[no_recess], sub)
    probs = sol[no_recess][["row_id", *TARGETS]]
    with pytest.raises(MetricError, match="solution has no 'subarticular' rows"):
        expected_score_parts(probs, sub, draws=1)


def test_prior_is_weighted_frequency_and_beats_uniform():
    sol, _ = _frames()
    prior = prior_submission(sol, sol["row_id"].tolist())
    spinal = prior.iloc[0][list(TARGETS)].to_numpy(dtype=float)
    freq = np.array([1, 1, 1]) / 3 * np.array([1, 2, 4])
    assert np.allclose(spinal, freq / freq.sum())
    _, uniform = _frames(np.full((len(ROWS), 3), 1 / 3))
    assert score(sol, prior) < score(sol, uniform)


def test_real_prior_scores_about_091(shared):
    from src.core.metric import solution_frame
    from src.data.tables import load_train

    sol = solution_frame(load_train(shared / "train.csv"))
    assert score(sol, prior_submission(sol, sol["row_id"].tolist())) == pytest.approx(0.911, abs=0.005)


def test_expected_score_averages_the_metric_over_label_draws():
    """Label probabilities that are the solution's own one-hot labels give the realized score to the last bit;
    a row whose written label is a coin toss between normal/mild and moderate gives, in the subarticular part,
    the mean of the two label sets' scores, the other parts unmoved."""
    sol, sub = _frames()
    probs = sol[["row_id", *TARGETS]].copy()
    assert expected_score_parts(probs, sub, draws=3) == pytest.approx(score_parts(sol, sub), abs=1e-12)
    probs.loc[6, list(TARGETS)] = [0.5, 0.5, 0.0]  # 2_right_subarticular_stenosis_l3_l4, labelled normal/mild
    as_moderate = sol.copy()
    as_moderate.loc[6, list(TARGETS)] = [0.0, 1.0, 0.0]
    as_moderate.loc[6, "sample_weight"] = 2.0
    expected = expected_score_parts(probs, sub, draws=2000)
    both = [score_parts(s, sub) for s in (sol, as_moderate)]
    assert expected["subarticular"] == pytest.approx((both[0]["subarticular"] + both[1]["subarticular"]) / 2, abs=0.01)
    assert both[1]["subarticular"] - both[0]["subarticular"] > 0.1  # the two draws do differ
    assert expected["spinal"] == pytest.approx(both[0]["spinal"], abs=1e-12)
    assert expected_score_parts(probs, sub, draws=50, seed=3) == expected_score_parts(probs, sub, draws=50, seed=3)
