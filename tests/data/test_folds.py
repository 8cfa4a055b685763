import numpy as np
import pandas as pd

import make_folds as make_folds_script
from src.data.folds import fold_class_counts, fold_solution, load_folds, make_folds, max_share_deviation, onehot_labels
from src.data.tables import load_train


def test_real_train_folds_stratified(shared):
    train = load_train(shared / "train.csv")
    folds = make_folds(train, n_folds=5, seed=42)
    assert len(folds) == len(train) and folds["study_id"].is_unique
    assert set(folds["study_id"]) == set(train["study_id"])
    sizes = folds["fold"].value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3, 4] and sizes.max() - sizes.min() < 25
    y = onehot_labels(train)
    overall = y.mean(0)
    for k in range(5):
        share = y[folds["fold"].to_numpy() == k].mean(0)
        assert np.abs(share - overall).max() <= 0.01, f"fold {k} off by more than 1 point"
    assert max_share_deviation(y, folds["fold"].to_numpy()) <= 0.01


def test_onehot_nan_has_no_class():
    train = pd.DataFrame({"study_id": [1]})
    from src.core.constants import LABEL_COLUMNS

    for col in LABEL_COLUMNS:
        train[col] = np.nan
    train[LABEL_COLUMNS[0]] = 2.0
    y = onehot_labels(train)
    assert y.shape == (1, 75) and y.sum() == 1 and y[0, 2] == 1


def test_cli_writes_disjoint_folds(synth_dir, tmp_path, capsys):
    out = tmp_path / "folds.csv"
    make_folds_script.main(["--data-dir", str(synth_dir), "--n-folds", "4", "--seed", "1", "--out", str(out)])
    folds = load_folds(out)
    train = load_train(synth_dir / "train.csv")
    assert sorted(folds["study_id"]) == sorted(train["study_id"]) and folds["fold"].nunique() == 4
    counts = fold_class_counts(train, folds)
    assert counts["studies"].sum() == len(train)
    assert "Normal/Mild" in capsys.readouterr().out


def test_fold_solution_scores_oof(synth_dir):
    from src.core.metric import score
    from src.data.tables import load_submission

    train = load_train(synth_dir / "train.csv")
    folds = make_folds(train, n_folds=2, seed=0)
    sol = fold_solution(train, folds, 1)
    studies = set(sol["row_id"].str.split("_").str[0].astype(int))
    assert studies == set(folds.loc[folds["fold"] == 1, "study_id"])
    oracle = load_submission(synth_dir / "train_oracle.csv")
    assert 0 < score(sol, oracle) < 1.0
