import pandas as pd
import pytest
from conftest import make_fake_runs

import infer as infer_script
from src.core.constants import TARGETS
from src.evaluation.explain import reading


def test_reading_in_plain_language():
    rows = pd.DataFrame({"row_id": ["7_left_subarticular_stenosis_l4_l5", "7_spinal_canal_stenosis_l1_l2",
                                    "7_right_neural_foraminal_narrowing_l5_s1"]})
    rows[list(TARGETS)] = [[0.07, 0.10, 0.83], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2]]
    text = reading(7, rows)
    assert text.splitlines() == ["Study 7:", "Severe left subarticular stenosis at L4/L5 (p = 0.83).",
                                 "Moderate right neural foraminal narrowing at L5/S1 (p = 0.60)."]
    calm = reading(7, rows.iloc[[1]])
    assert "No moderate or severe" in calm


@pytest.mark.filterwarnings("ignore")
def test_infer_explain_writes_text_and_sheet(synth_dir, tmp_path, monkeypatch):
    """After the submission is written: a reading and a sheet per study, the attention model loaded once."""
    from src.evaluation import explain as explain_lib

    loads = []
    real = explain_lib.load_model
    monkeypatch.setattr(explain_lib, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    runs = make_fake_runs(tmp_path / "runs")
    studies = [str(s) for s in pd.read_csv(synth_dir / "test_series_descriptions.csv")["study_id"].unique()[:2]]
    out = tmp_path / "sub.csv"
    assert infer_script.main(["--data-dir", str(synth_dir), "--runs", str(runs), "--out", str(out), "--cache-dir",
                              str(tmp_path / "cache"), "--studies", *studies, "--explain", *studies,
                              "--workers", "1", "--per-model"]) == 0
    assert len(pd.read_csv(out)) == 50
    for model in ("attn_resnext", "cnn_lstm"):
        assert len(pd.read_csv(tmp_path / f"submission_{model}.csv")) == 50
    for study in studies:
        text = (tmp_path / "explain" / f"reading_{study}.txt").read_text()
        assert text.startswith(f"Study {study}:")
        assert (tmp_path / "explain" / f"sheet_{study}.png").stat().st_size > 10_000
    assert len(loads) == 1


@pytest.mark.filterwarnings("ignore")
def test_explanations_that_fail_leave_the_submission_whole(synth_dir, tmp_path, monkeypatch):
    from src.evaluation import explain as explain_lib

    def broken(*a, **k):
        raise RuntimeError("no attention today")

    monkeypatch.setattr(explain_lib, "attention_maps", broken)
    runs = make_fake_runs(tmp_path / "runs")
    study = str(pd.read_csv(synth_dir / "test_series_descriptions.csv")["study_id"].iloc[0])
    out = tmp_path / "sub.csv"
    assert infer_script.main(["--data-dir", str(synth_dir), "--runs", str(runs), "--out", str(out), "--cache-dir",
                              str(tmp_path / "cache"), "--studies", study, "--explain", study, "--workers", "1"]) == 4
    assert len(pd.read_csv(out)) == 25
