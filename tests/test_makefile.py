"""`make pipeline` end to end on the tiny synthetic set, its output sent to a file as a user's log would be."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO


@pytest.mark.filterwarnings("ignore")
def test_make_pipeline_runs_a_recipe_end_to_end(synth_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: tiny\nepochs: 1\nworkers: 0\nlog_every: 1\ncrop: {size_px: 16}\nloc: {size_px: 32}\n"
                      "per_series_type:\n  axial: {loc: {sigma: 3.0}}\n")
    paths = {k: tmp_path / k.lower() for k in ("RUNS", "SUBMISSIONS", "REPORTS", "CACHE_DIR")}
    folds = tmp_path / "folds.csv"
    log = tmp_path / "pipeline.log"
    with log.open("w") as out:
        done = subprocess.run(["make", "-o", "install", "pipeline", f"PY={sys.executable}", f"DATA={synth_dir}",
                               f"CONFIG={recipe}", "FOLD_IDS=0", f"FOLDS_FILE={folds}",
                               *[f"{k}={v}" for k, v in paths.items()]], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    # Every stage ran: folds, each model of the recipe (per-type values saved), ensemble, every row, reports.
    assert folds.is_file()
    runs = paths["RUNS"]
    assert {p.parent.parent.name for p in runs.glob("*/fold0/best.pt")} == {
        "attn_resnext", "cnn_lstm", "localizer_sagittal_t2", "localizer_sagittal_t1", "localizer_axial"}
    saved = yaml_load(runs / "localizer_axial" / "fold0" / "config.yaml")
    assert saved["loc"]["sigma"] == 3.0 and saved["epochs"] == 1
    # The final stage was fitted on what test time sees: each classifier fold's predictions at its predicted points.
    assert all((runs / m / "fold0" / "oof_predicted.csv").is_file() for m in ("attn_resnext", "cnn_lstm"))
    final = json.loads((runs / "ensemble.json").read_text())["final_stage"]
    assert final["source"] == "oof_predicted.csv" and final["chosen"] in ("mean", "weights")
    sub = pd.read_csv(paths["SUBMISSIONS"] / "submission.csv")
    assert sub["row_id"].tolist() == pd.read_csv(synth_dir / "sample_submission.csv")["row_id"].tolist()
    reports = paths["REPORTS"]
    for name in ("report.md", "metrics.json", "localization.json", "localization_errors.csv", "localization_test.json",
                 "localization_test_errors.png", "reliability.png"):
        assert (reports / name).is_file(), name
    assert [r["submission"] for r in json.loads((reports / "metrics.json").read_text())["test"]][:2] == ["prior", "ensemble"]
    assert any(paths["CACHE_DIR"].iterdir())
    # A log that reads well in a file: no carriage returns, timestamped progress lines at a bounded rate
    # (training logs every log_every = 1 step here, so the count is bounded by the steps, not by redraws).
    assert "\r" not in text
    assert len(text.splitlines()) < 600
    stamped = [line for line in text.splitlines() if line[:4].isdigit() and line[10:11] == " "]
    assert any(" step 1/" in line for line in stamped) and any("epoch 1: train_loss" in line for line in stamped)


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_make_pipeline_refuses_a_folder_without_data(tmp_path):
    done = subprocess.run(["make", "-o", "install", "pipeline", f"PY={sys.executable}", f"DATA={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and f"{tmp_path}/train.csv not found" in done.stdout
    assert not (REPO / "runs" / tmp_path.name).exists()
