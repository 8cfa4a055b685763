import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from src.constants import CONDITION_SERIES, LABEL_COLUMNS, TARGETS
from src.metric import prior_submission, score
from src.synth import generate, label_probabilities, metric_optimal
from src.tables import (
    load_coordinates,
    load_series_descriptions,
    load_solution,
    load_submission,
    load_train,
    solution_frame,
)


def test_competition_layout(synth_dir):
    for name in ["train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv", "test_series_descriptions.csv",
                 "sample_submission.csv", "test_solution.csv", "test_oracle.csv", "train_oracle.csv"]:
        assert (synth_dir / name).is_file(), name
    train = load_train(synth_dir / "train.csv")
    series = load_series_descriptions(synth_dir / "train_series_descriptions.csv")
    test_series = load_series_descriptions(synth_dir / "test_series_descriptions.csv")
    assert len(train) == 8 and test_series["study_id"].nunique() == 4
    assert set(series["study_id"]) == set(train["study_id"]) and not set(series["study_id"]) & set(test_series["study_id"])
    for frame, split in ((series, "train"), (test_series, "test")):
        for row in frame.itertuples():
            files = list((synth_dir / f"{split}_images" / str(row.study_id) / str(row.series_id)).glob("*.dcm"))
            assert files, f"no images for series {row.series_id}"
    sample = load_submission(synth_dir / "sample_submission.csv")
    assert len(sample) == 25 * 4 and np.allclose(sample[list(TARGETS)], 1 / 3)
    oracle = load_submission(synth_dir / "test_oracle.csv")
    assert oracle["row_id"].tolist() == sample["row_id"].tolist()
    assert np.allclose(oracle[list(TARGETS)].sum(1), 1)


def test_dicom_tags_and_series_types(synth_dir):
    series = load_series_descriptions(synth_dir / "train_series_descriptions.csv")
    row = series.iloc[0]
    path = next((synth_dir / "train_images" / str(row.study_id) / str(row.series_id)).glob("*.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.SeriesDescription == row.series_description and ds.Modality == "MR"
    assert int(path.stem) == ds.InstanceNumber
    assert len(ds.ImageOrientationPatient) == 6 and len(ds.PixelSpacing) == 2
    counts = series.groupby("study_id")["series_description"].value_counts().unstack(fill_value=0)
    assert (counts["Axial T2"] >= 1).all() and counts["Axial T2"].max() >= 2  # several axials occur


def test_every_coordinate_points_to_a_dicom_of_the_right_series_type(synth_dir):
    coords = load_coordinates(synth_dir / "train_label_coordinates.csv")
    series = load_series_descriptions(synth_dir / "train_series_descriptions.csv")
    merged = coords.merge(series, on=["study_id", "series_id"], how="left")
    assert merged["series_description"].notna().all()
    assert (merged["series_description"] == merged["condition"].map(CONDITION_SERIES)).all()
    for row in merged.itertuples():
        path = synth_dir / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"
        assert path.is_file(), path
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert 0 <= row.x < ds.Columns and 0 <= row.y < ds.Rows
    # Coordinates exist exactly for labelled cells (minus the rare missing series or point).
    train = load_train(synth_dir / "train.csv")
    assert len(coords) <= int(train[list(LABEL_COLUMNS)].notna().sum().sum())
    assert len(coords) >= 0.85 * int(train[list(LABEL_COLUMNS)].notna().sum().sum())


def test_oracle_beats_prior_on_test_solution(synth_dir):
    solution = load_solution(synth_dir / "test_solution.csv")
    oracle = load_submission(synth_dir / "test_oracle.csv")
    train_solution = solution_frame(load_train(synth_dir / "train.csv"))
    prior = prior_submission(train_solution, oracle["row_id"].tolist())
    assert score(solution, oracle) < score(solution, prior) - 0.2


def test_label_model_and_metric_optimum():
    p = label_probabilities(np.array([0.0, 0.4, 0.55, 0.7, 1.0]))
    assert np.allclose(p.sum(1), 1) and (p >= 0).all()
    assert p[0, 0] > 0.99 and p[-1, 2] > 0.99
    assert p[1, 0] == pytest.approx(0.5) and p[3, 2] == pytest.approx(0.5)
    q = metric_optimal(np.array([0.7, 0.2, 0.1]))
    assert np.allclose(q, np.array([0.7, 0.4, 0.4]) / 1.5)
    # The reweighted posterior has lower expected weighted log loss than the posterior itself.
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 1, 20000)
    post = label_probabilities(s)
    y = np.array([rng.choice(3, p=pi / pi.sum()) for pi in post])
    w = np.array([1.0, 2.0, 4.0])[y]

    def loss(pred):
        return -(w * np.log(pred[np.arange(len(y)), y])).sum() / w.sum()

    assert loss(metric_optimal(post)) < loss(post)


def test_labels_follow_real_patterns(shared, tmp_path, tiny):
    out = tmp_path / "patterns"
    generate(tiny(out, studies=30, test_studies=0, image_size=32, voxel_mm=3.0, sag_slices=(3, 3),
                         axial_per_level=(1, 1), patterns=shared / "train.csv"))
    train = load_train(out / "train.csv")
    values = train[list(LABEL_COLUMNS)].to_numpy()
    real = load_train(shared / "train.csv")[list(LABEL_COLUMNS)].to_numpy()
    # Mostly normal/mild like the real data, with moderate and severe present.
    labelled = values[~np.isnan(values)]
    assert 0.6 < (labelled == 0).mean() < 0.95 and (labelled > 0).any()
    # Subarticular (last 10 columns) is more often abnormal than spinal (first 5) in the real data.
    assert np.nanmean(real[:, 15:] > 0) > np.nanmean(real[:, :5] > 0)
    latent = pd.read_csv(out / "train_latent.csv")
    # Written labels agree with the latent severity band most of the time (readers disagree near edges).
    band = np.digitize(latent["severity"], [0.4, 0.7])
    written = latent["label"].to_numpy()
    ok = ~np.isnan(written)
    assert (band[ok] == written[ok]).mean() > 0.75


def test_same_seed_same_data(tmp_path, tiny):
    kwargs = dict(studies=2, test_studies=1, image_size=32, voxel_mm=3.0, sag_slices=(3, 3), axial_per_level=(1, 1))
    generate(tiny(tmp_path / "a", **kwargs))
    generate(tiny(tmp_path / "b", **kwargs))
    for name in ("train.csv", "train_label_coordinates.csv", "test_oracle.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    cfg = json.loads((tmp_path / "a" / "synth_config.json").read_text())
    assert cfg["studies"] == 2 and cfg["image_size"] == 32
