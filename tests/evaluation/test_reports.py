import json

import numpy as np
import pandas as pd
import pytest

import evaluate as evaluate_script
from src.core import config as config_lib
from src.core.constants import TARGETS
from src.core.metric import solution_frame
from src.data.tables import DataError, load_train
from src.evaluation.reports import paper_metrics


def test_paper_metrics_by_hand():
    labels = np.array([0, 0, 1, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    m = paper_metrics(labels, probs)
    assert m["three_class"]["acc"] == pytest.approx(0.75)
    # Binary view: p(moderate or severe) = 0.2, 0.6, 0.8, 0.9 against 0, 0, 1, 1.
    assert m["binary"]["acc"] == pytest.approx(0.75) and m["binary"]["precision"] == pytest.approx(2 / 3)
    assert m["binary"]["recall"] == pytest.approx(1.0) and m["binary"]["auc"] == pytest.approx(1.0)


def test_evaluate_writes_report_metrics_and_pictures(synth_dir, tmp_path):
    train = load_train(synth_dir / "train.csv")
    studies = train["study_id"].tolist()
    folds = pd.DataFrame({"study_id": studies, "fold": [i % 2 for i in range(len(studies))]})
    folds.to_csv(tmp_path / "folds.csv", index=False)
    sol = solution_frame(train)
    rng = np.random.default_rng(0)
    for name, mix in (("attn_resnext", 0.7), ("cnn_lstm", 0.4)):
        for fold in (0, 1):
            ids = set(folds.loc[folds["fold"] == fold, "study_id"].astype(str))
            part = sol[sol["row_id"].str.split("_").str[0].isin(ids)]
            run = tmp_path / "runs" / name / f"fold{fold}"
            run.mkdir(parents=True)
            (run / "best.pt").write_bytes(b"")
            config_lib.save(config_lib.resolve(name), run / "config.yaml")
            p = mix * part[list(TARGETS)].to_numpy() + (1 - mix) * rng.dirichlet([1, 1, 1], len(part))
            frame = pd.DataFrame(p, columns=list(TARGETS))
            frame.insert(0, "row_id", part["row_id"].to_numpy())
            frame.to_csv(run / "oof.csv", index=False)
            pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "acc": [0.5, 0.6],
                          "score": [0.9, 0.7]}).to_csv(run / "log.csv", index=False)
    out = tmp_path / "reports"
    out.mkdir()
    pd.DataFrame({"study_id": [1, 1, 2], "condition": ["Spinal Canal Stenosis"] * 2 + ["Left Subarticular Stenosis"],
                  "level": ["L1/L2", "L2/L3", "L1/L2"], "error_mm": [1.0, 40.0, 3.0]}).to_csv(
        out / "localization_errors.csv", index=False)
    (tmp_path / "runs" / "ensemble.json").write_text(json.dumps(
        {"weights": {"attn_resnext": 0.6, "cnn_lstm": 0.4},
         "temperature": {"spinal": 0.7, "foraminal": 1.0, "subarticular": 1.3}}))
    metrics = evaluate_script.main(["--runs", str(tmp_path / "runs"), "--data-dir", str(synth_dir),
                                    "--folds", str(tmp_path / "folds.csv"), "--out-dir", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["scores"]) == {"prior", "attn_resnext", "cnn_lstm", "ensemble", "oracle"}
    assert saved["scores"]["attn_resnext"]["score"] < saved["scores"]["cnn_lstm"]["score"] < saved["scores"]["prior"]["score"]
    assert saved["scores"]["oracle"]["score"] < saved["scores"]["prior"]["score"]
    assert 0 < metrics["signal_captured"]["attn_resnext"] <= 1.5
    for png in ("confusion_attn_resnext.png", "curves_cnn_lstm.png", "roc_pr.png", "reliability.png",
                "localization_errors.png"):
        assert (out / png).stat().st_size > 1000
    # Per level and per fold: every level and fold, every model and the prior; the folds' rows make up the whole.
    assert list(saved["by_level"]) == ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]
    assert list(saved["by_fold"]) == ["fold 0", "fold 1"]
    assert set(saved["by_fold"]["fold 0"]) == {"attn_resnext", "cnn_lstm", "ensemble", "prior"}
    assert all(v["attn_resnext"] < v["prior"] for v in saved["by_level"].values())
    cal = saved["calibration"]
    assert cal["model"] == "ensemble" and cal["temperature"]["spinal"] == 0.7
    assert set(cal["ece"]) == {"spinal", "foraminal", "subarticular"}
    assert cal["ece"]["foraminal"]["before"] == pytest.approx(cal["ece"]["foraminal"]["after"])  # temperature 1
    report = (out / "report.md").read_text()
    assert "## Score per level" in report and "| L5/S1 |" in report and "| fold 1 |" in report
    assert "## Calibration" in report and "spinal 0.70" in report
    assert "0.9486" in report and "different dataset" in report and "precision" in report and "roc_pr.png" in report


def test_held_out_table_scores_every_submission(synth_dir, tmp_path):
    import shutil

    from src.evaluation.reports import held_out_table

    shutil.copy(synth_dir / "test_oracle.csv", tmp_path / "submission.csv")
    shutil.copy(synth_dir / "sample_submission.csv", tmp_path / "submission_uniform.csv")
    shutil.copy(synth_dir / "test_label_coordinates.csv", tmp_path / "submission.coordinates.csv")  # not a submission
    table = held_out_table(tmp_path, synth_dir).set_index("submission")
    assert list(table.index) == ["prior", "ensemble", "uniform", "oracle"]
    assert table.loc["ensemble", "score"] == pytest.approx(table.loc["oracle", "score"])
    assert table.loc["ensemble", "signal_captured"] == pytest.approx(1.0)
    assert table.loc["prior", "signal_captured"] == pytest.approx(0.0)
    assert table.loc["uniform", "spinal"] == pytest.approx(np.log(3))  # 1/3 everywhere: log 3 per group
    # a synthetic set: every submission also scored over label sets drawn again from the generator's probabilities
    # (the same draws for each: a copy of the oracle scores as the oracle does)
    assert table.loc["ensemble", "expected_score"] == pytest.approx(table.loc["oracle", "expected_score"], abs=1e-12)
    expected = table["expected_score"]
    assert expected["oracle"] < min(expected["prior"], expected["uniform"])
    assert expected.between(0.0, 2.0).all()
    latent, first = pd.read_csv(synth_dir / "test_latent.csv"), pd.read_csv(synth_dir / "test_solution.csv").row_id[0]
    data = tmp_path / "data"
    data.mkdir()
    for name in ("test_solution.csv", "train.csv", "test_oracle.csv"):
        shutil.copy(synth_dir / name, data / name)
    latent[latent.row_id != first].to_csv(data / "test_latent.csv", index=False)  # a row of the solution left out
    with pytest.raises(DataError, match=f"test_latent.csv: no label probabilities for row '{first}'"):
        held_out_table(tmp_path, data)


def test_calibration_error_tells_calibrated_from_overconfident():
    from src.evaluation.reports import calibration

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], 20000)
    labels = np.array([rng.choice(3, p=p) for p in probs])  # drawn from the predictions: calibrated
    _, calibrated = calibration(labels, probs)
    sharp = probs ** 4 / (probs ** 4).sum(1, keepdims=True)  # the same ranking, overconfident
    curves, overconfident = calibration(labels, sharp)
    assert calibrated < 0.02 and overconfident > 0.08
    assert [k for k, _, _ in curves] == [0, 1, 2] and all(len(p) == len(o) for _, p, o in curves)


def test_across_reports_gives_mean_spread_and_the_ensemble_verdict(tmp_path, capsys):
    """Two sets' held-out tables: the mean and spread per submission, the localization shares, and whether the
    ensemble beat its best member in both (here it does not in the second)."""
    def report(name, ensemble, attn, cnn, within, level_off):
        folder = tmp_path / name
        folder.mkdir()
        test = [{"submission": s, "score": v, "spinal": v + 0.01, "signal_captured": 1 - v}
                for s, v in (("prior", 1.0), ("ensemble", ensemble), ("attn_resnext", attn), ("cnn_lstm", cnn))]
        (folder / "metrics.json").write_text(json.dumps({"test": test}))
        loc = [{"condition": c, "points": n, "within_5mm": w} for c, n, w in zip("ab", (100, 300), within)]
        (folder / "localization_test.json").write_text(json.dumps({"studies": 100, "studies_with_a_point_a_level_off": level_off,
                                                                   "localization": loc}))
        return folder

    a = report("s1", 0.30, 0.32, 0.31, (1.0, 0.98), 0)
    b = report("s2", 0.34, 0.35, 0.33, (0.96, 1.0), 2)
    out = evaluate_script.main(["--across", str(a), str(b), "--out-dir", str(tmp_path / "out")])["across"]
    rows = {r["submission"]: r for r in out}
    assert rows["ensemble"]["score_mean"] == pytest.approx(0.32) and rows["ensemble"]["score_spread"] == pytest.approx(0.04)
    assert rows["cnn_lstm"]["spinal_mean"] == pytest.approx(0.33)
    assert rows["prior"]["within_5mm_mean"] == pytest.approx((0.985 + 0.99) / 2)  # point-weighted per set
    assert rows["prior"]["studies_level_off_spread"] == pytest.approx(0.02)
    assert rows["ensemble"]["ensemble_at_least_best_member"] is False
    assert (tmp_path / "out" / "across.csv").is_file()
    assert "ensemble at least as good as its best member in every report: no" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        evaluate_script.main(["--across", str(tmp_path / "out")])


def test_across_reports_gives_no_mean_for_a_number_some_report_lacks(tmp_path, capsys):
    """An older report without the expected score, and a member in one report only: no mean over the reports
    that have them (which would read as one over all), and the lines name what is missing where."""
    def report(name, rows):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"test": rows}))
        return folder

    old = report("old", [{"submission": "ensemble", "score": 0.30}, {"submission": "cnn_lstm", "score": 0.31}])
    new = report("new", [{"submission": "ensemble", "score": 0.34, "expected_score": 0.35},
                         {"submission": "cnn_lstm", "score": 0.36, "expected_score": 0.37},
                         {"submission": "study", "score": 0.33, "expected_score": 0.34}])
    out = evaluate_script.main(["--across", str(old), str(new), "--out-dir", str(tmp_path / "out")])["across"]
    rows = {r["submission"]: r for r in out}
    assert rows["ensemble"]["score_mean"] == pytest.approx(0.32)
    assert np.isnan(rows["ensemble"]["expected_score_mean"]) and np.isnan(rows["study"]["score_mean"])
    printed = capsys.readouterr().out
    assert "| ensemble | 0.3200 (0.0400) | - |" in printed
    assert f"study missing from {old}; expected_score missing from {old}" in printed
    assert rows["ensemble"]["ensemble_at_least_best_member"] is False  # 0.34 against the study's 0.33
