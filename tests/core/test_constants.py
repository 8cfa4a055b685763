import pandas as pd

from src.core.constants import (
    CONDITION_SERIES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVELS,
    SERIES_DESCRIPTIONS,
    group_of,
    label_column,
    row_id,
    split_row_id,
)


def test_label_columns_match_real_train_header(shared):
    header = pd.read_csv(shared / "train.csv", nrows=0).columns.tolist()
    assert header == ["study_id", *LABEL_COLUMNS]


def test_row_id_format_matches_sample_submission(shared):
    sample = pd.read_csv(shared / "sample_submission.csv")
    study = int(sample["row_id"].iloc[0].split("_")[0])
    assert sorted(row_id(study, c, lv) for c in CONDITIONS for lv in LEVELS) == sample["row_id"].tolist()


def test_row_id_round_trip_and_groups():
    rid = row_id(4003253, "Left Subarticular Stenosis", "L5/S1")
    assert rid == "4003253_left_subarticular_stenosis_l5_s1"
    assert split_row_id(rid) == (4003253, label_column("Left Subarticular Stenosis", "L5/S1"))
    assert [group_of(label_column(c, "L1/L2")) for c in CONDITIONS] == [
        "spinal", "foraminal", "foraminal", "subarticular", "subarticular"
    ]


def test_condition_series_agree_with_real_coordinates(shared):
    coords = pd.read_csv(shared / "train_label_coordinates.csv")
    series = pd.read_csv(shared / "train_series_descriptions.csv")
    merged = coords.merge(series, on=["study_id", "series_id"])
    majority = merged.groupby("condition")["series_description"].agg(lambda s: s.value_counts().index[0])
    assert majority.to_dict() == CONDITION_SERIES
    assert set(series["series_description"]) == set(SERIES_DESCRIPTIONS)


def test_condition_group_names_each_conditions_metric_group():
    from src.core.constants import CONDITIONS, condition_group

    assert [condition_group(c) for c in CONDITIONS] == ["spinal", "foraminal", "foraminal", "subarticular", "subarticular"]
