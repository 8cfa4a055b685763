import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_fake_runs

import infer as infer_script
from src.core.constants import TARGETS
from src.data.tables import load_series_descriptions, load_submission
from src.inference.context import InferenceContext


@pytest.fixture()
def broken_data(synth_dir, tmp_path):
    """The tiny test split with a corrupt DICOM, a deleted series and a listed study that has no images."""
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    series = load_series_descriptions(data / "test_series_descriptions.csv")
    first, second = series["study_id"].unique()[:2]
    victim = next((data / "test_images" / str(first)).glob("*/*.dcm"))
    victim.write_bytes(victim.read_bytes()[:200])
    gone = series[series["study_id"] == second].iloc[0]
    shutil.rmtree(data / "test_images" / str(second) / str(gone.series_id))
    ghost = 999_999_999
    rows = pd.concat([pd.read_csv(data / "test_series_descriptions.csv"),
                      pd.DataFrame([[ghost, 1234, "Sagittal T1"], [ghost, 1235, "Axial T2"]], columns=series.columns)])
    rows.to_csv(data / "test_series_descriptions.csv", index=False)
    sample = pd.read_csv(data / "sample_submission.csv")
    extra = sample.iloc[:25].copy()
    extra["row_id"] = extra["row_id"].str.replace(str(first), str(ghost), regex=False)
    pd.concat([sample, extra]).to_csv(data / "sample_submission.csv", index=False)
    return data


@pytest.mark.filterwarnings("ignore")
def test_submission_complete_and_valid_despite_bad_input(broken_data, tmp_path):
    runs = make_fake_runs(tmp_path / "runs", experiments=("attn_resnext_wide",))
    out = tmp_path / "sub" / "submission.csv"
    code = infer_script.main(["--data-dir", str(broken_data), "--runs", str(runs), "--out", str(out),
                              "--cache-dir", str(tmp_path / "cache"), "--workers", "1", "--per-model"])
    assert code == 0
    # Without an ensemble.json every classifier run takes part, an experiment under its own --name too.
    assert sorted(p.name for p in out.parent.glob("submission_*.csv")) == [
        "submission_attn_resnext.csv", "submission_attn_resnext_wide.csv", "submission_cnn_lstm.csv"]
    sub = load_submission(out)
    sample = load_submission(broken_data / "sample_submission.csv")
    assert sub["row_id"].tolist() == sample["row_id"].tolist()
    values = sub[list(TARGETS)].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and np.allclose(values.sum(1), 1)
    # The study without images gets the prior; the others get model predictions (not all equal to the prior).
    ghost = sub[sub["row_id"].str.startswith("999999999_")]
    assert len(ghost) == 25
    others = sub[~sub["row_id"].str.startswith("999999999_")]
    assert others[list(TARGETS)].round(6).drop_duplicates().shape[0] > 3


def test_missing_data_folder_is_bad_input(tmp_path, capsys):
    """Like every other script: exit 2 and one line naming the folder (cli.guard), nothing written."""
    from src.core import cli

    code = cli.guard(infer_script.main, ["--data-dir", str(tmp_path / "nowhere"), "--runs", str(tmp_path), "--out",
                                         str(tmp_path / "s.csv"), "--cache-dir", str(tmp_path / "c")])
    assert code == 2 and not (tmp_path / "s.csv").exists()
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere'}: no such data folder" in err and len(err.strip().splitlines()) == 1


def test_nothing_written_gives_exit_1(tmp_path, capsys):
    """A data folder without any split file or sample: not even the prior can be written."""
    (tmp_path / "empty").mkdir()
    code = infer_script.main(["--data-dir", str(tmp_path / "empty"), "--runs", str(tmp_path), "--out",
                              str(tmp_path / "s.csv"), "--cache-dir", str(tmp_path / "c")])
    assert code == 1 and not (tmp_path / "s.csv").exists()
    assert "nothing written" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore")
def test_broken_classifier_run_still_gives_every_row(synth_dir, tmp_path, capsys):
    runs = make_fake_runs(tmp_path / "runs")
    (runs / "attn_resnext" / "fold0" / "best.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "submission.csv"
    best = runs / "attn_resnext" / "fold0" / "best.pt"
    code = infer_script.main(["--data-dir", str(synth_dir), "--runs", str(runs), "--out", str(out),
                              "--cache-dir", str(tmp_path / "cache"), "--workers", "1", "--batch-studies", "3"])
    assert code == 0  # without --strict a dropped member still exits 0 (the corruption suite checks --strict)
    said = capsys.readouterr().out
    assert said.count(f"attn_resnext fold 0: {best}: does not load") == 1 and "; fold dropped" in said  # once: the summary
    sub = load_submission(out)
    assert sub["row_id"].tolist() == load_submission(synth_dir / "sample_submission.csv")["row_id"].tolist()
    assert np.allclose(sub[list(TARGETS)].sum(1), 1)
    assert sub[list(TARGETS)].round(6).drop_duplicates().shape[0] > 3  # cnn_lstm still predicts


def test_finalize_orders_rows_and_repairs_invalid_ones():
    from src.inference.pipeline import finalize

    ids = ["1_spinal_canal_stenosis_l1_l2", "1_spinal_canal_stenosis_l2_l3", "1_spinal_canal_stenosis_l3_l4"]
    prior = pd.DataFrame({"row_id": ids, "normal_mild": 0.5, "moderate": 0.3, "severe": 0.2})
    sub = pd.DataFrame({"row_id": ids[::-1], "normal_mild": [2.0, np.nan, 1.0], "moderate": [1.0, 0.1, 1.0],
                        "severe": [1.0, 0.1, 0.0]})
    from src.core.faults import FaultLog

    faults = FaultLog()
    out = finalize(sub, ids, prior, faults)
    assert "1 rows had non-finite or invalid predictions" in faults.summary()
    assert out["row_id"].tolist() == ids
    assert [(f.unit, f.rows) for f in faults.faults] == [("predictions", 1)] and faults.model_dropped
    assert out[list(TARGETS)].to_numpy().ravel() == pytest.approx([0.5, 0.5, 0.0, 0.5, 0.3, 0.2, 0.5, 0.25, 0.25])


@pytest.mark.filterwarnings("ignore")
def test_make_submission_prepares_once_and_keeps_only_the_asked_studies(synth_dir, tmp_path, monkeypatch):
    import src.data.cache
    import src.inference.pipeline as pipeline

    calls = []
    real = src.data.cache.prepare
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: calls.append(a) or real(*a, **k))
    runs = make_fake_runs(tmp_path / "runs")
    studies = load_series_descriptions(synth_dir / "test_series_descriptions.csv")["study_id"].unique()[:2].tolist()
    ctx = InferenceContext(synth_dir, runs, tmp_path / "cache", "test", tmp_path / "s.csv", workers=1)
    out = pipeline.make_submission(ctx, studies=studies)
    assert len(calls) == 1
    assert sorted(set(out["row_id"].str.split("_").str[0].astype(int))) == sorted(studies) and len(out) == 50
    assert load_submission(tmp_path / "s.csv")["row_id"].tolist() == out["row_id"].tolist()


@pytest.mark.filterwarnings("ignore")
def test_the_coordinates_written_beside_a_submission_score_as_localizing_again(synth_dir, tmp_path):
    import evaluate_localization
    from src.data.tables import load_coordinates
    from src.inference.pipeline import coordinates_path

    runs = make_fake_runs(tmp_path / "runs", classifiers=False)
    out = tmp_path / "sub" / "submission.csv"
    common = ["--data-dir", str(synth_dir), "--runs", str(runs), "--cache-dir", str(tmp_path / "cache")]
    assert infer_script.main(common + ["--out", str(out), "--workers", "1"]) == 3  # no classifier: every row the prior
    coords = load_coordinates(coordinates_path(out))
    series = load_series_descriptions(synth_dir / "test_series_descriptions.csv")
    assert set(coords["study_id"]) == set(series["study_id"]) and coords.groupby("study_id").size().eq(25).all()
    assert coords["confidence"].between(0, 1).all()  # read back as numbers
    again = evaluate_localization.main(common + ["--split", "test", "--out", str(tmp_path / "a.json")])
    given = evaluate_localization.main(common + ["--split", "test", "--out", str(tmp_path / "b.json"),
                                                 "--coords", str(coordinates_path(out))])
    assert given["coords"] == str(coordinates_path(out)) and again["coords"] is None
    errors = pd.read_csv(tmp_path / "b_errors.csv")  # every point's error, for evaluate.py's histograms
    assert len(errors) == sum(r["points"] for r in given["localization"]) and {"condition", "error_mm"} <= set(errors)
    pd.testing.assert_frame_equal(pd.DataFrame(given["localization"]), pd.DataFrame(again["localization"]), rtol=1e-9)
    with pytest.raises(SystemExit):
        evaluate_localization.main(common + ["--coords", str(coordinates_path(out))])
    # Each foramen and axial level may name its neighbouring slice (stage 2 averages the two); the canal never;
    # --slice-sd-mm 0 reads one slice per point, and a negative spread is one line before any work.
    named = coords["alt_instance_number"].notna()
    assert not named[coords["condition"] == "Spinal Canal Stenosis"].any() and named.any()
    assert coords.loc[named, "alt_weight"].between(0.01, 1).all() and (coords.loc[~named, "alt_weight"] == 0).all()
    one = tmp_path / "one" / "submission.csv"
    assert infer_script.main(common + ["--out", str(one), "--workers", "1", "--slice-sd-mm", "0"]) == 3
    plain = load_coordinates(coordinates_path(one))
    assert plain["alt_instance_number"].isna().all() and (plain["alt_weight"] == 0).all()
    pd.testing.assert_frame_equal(plain[["instance_number", "x", "y"]], coords[["instance_number", "x", "y"]])
    assert infer_script.cli.guard(infer_script.main, common + ["--out", str(tmp_path / "n.csv"), "--slice-sd-mm", "-1"]) == 2


@pytest.mark.filterwarnings("ignore")
def test_at_points_cuts_the_crops_at_a_given_table_without_any_localizer(synth_dir, tmp_path, capsys):
    """infer.py --at-points: stage 2 alone, at the test split's labelled points (no localizer run is needed, and
    the written coordinates are those points); a table that does not read is one line before any work."""
    from src.data.tables import load_coordinates
    from src.inference.pipeline import coordinates_path

    runs = make_fake_runs(tmp_path / "runs")
    for loc in runs.glob("localizer_*"):
        shutil.rmtree(loc)
    labelled = synth_dir / "test_label_coordinates.csv"
    out = tmp_path / "sub" / "submission.csv"
    common = ["--data-dir", str(synth_dir), "--runs", str(runs), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    assert infer_script.main(common + ["--out", str(out), "--at-points", str(labelled)]) == 0
    used = load_coordinates(coordinates_path(out))
    expected = load_coordinates(labelled)
    pd.testing.assert_frame_equal(used[["study_id", "series_id", "instance_number", "x", "y"]].reset_index(drop=True),
                                  expected[["study_id", "series_id", "instance_number", "x", "y"]].reset_index(drop=True))
    sub = load_submission(out)
    assert len(sub) == len(pd.read_csv(synth_dir / "sample_submission.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("study_id,x\n1,2\n")
    assert infer_script.cli.guard(infer_script.main, common + ["--out", str(tmp_path / "b.csv"), "--at-points", str(bad)]) == 2
    assert f"{bad}" in capsys.readouterr().err and not (tmp_path / "b.csv").exists()


def test_inference_imports_no_augmentation_library_and_chooses_no_plot_backend():
    """What the Kaggle notebook imports: no albumentations, no pyplot (whose import picks a backend)."""
    import subprocess
    import sys

    code = ("import sys, matplotlib; backend = matplotlib.rcParams._get_backend_or_none(); import src.inference.pipeline; "
            "print(sorted(m for m in ('albumentations', 'matplotlib.pyplot') if m in sys.modules), "
            "matplotlib.rcParams._get_backend_or_none() == backend)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    assert out.strip() == "[] True"


@pytest.mark.filterwarnings("ignore")
def test_a_missing_runs_folder_is_a_bad_command_and_an_empty_one_is_no_silent_prior(synth_dir, tmp_path, capsys):
    import localize as localize_script
    from src.core.cli import guard

    common = ["--data-dir", str(synth_dir), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    for script, out in ((infer_script, tmp_path / "sub.csv"), (localize_script, tmp_path / "coords.csv")):
        name = f"{Path(script.__file__).name}: "
        assert guard(script.main, [*common, "--runs", str(tmp_path / "rnus"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{tmp_path / 'rnus'}: no such runs folder (--runs)") and err.count("\n") == 0, err
        assert not out.exists()
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert guard(script.main, [*common, "--runs", str(tmp_path / "empty"), "--out", str(out)]) == 3
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith(name)]
        assert len(said) == 1 and f"under {tmp_path / 'empty'} could be used" in said[0], said
        assert out.is_file()
    assert load_submission(tmp_path / "sub.csv")["row_id"].tolist() == load_submission(
        synth_dir / "sample_submission.csv")["row_id"].tolist()
