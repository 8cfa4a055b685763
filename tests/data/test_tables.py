import numpy as np
import pandas as pd
import pytest

from src.core.constants import LABEL_COLUMNS, TARGETS
from src.core.metric import solution_frame
from src.data.tables import (
    DataError,
    load_coordinates,
    load_label_probabilities,
    load_series_descriptions,
    load_solution,
    load_submission,
    load_train,
    submission_row_ids,
)


def test_real_files_load(shared):
    train = load_train(shared / "train.csv")
    assert train.shape == (1975, 26)
    assert int(train[list(LABEL_COLUMNS)].isna().sum().sum()) == 572
    assert set(np.unique(train[list(LABEL_COLUMNS)].to_numpy()[~np.isnan(train[list(LABEL_COLUMNS)].to_numpy())])) == {0, 1, 2}
    assert len(load_series_descriptions(shared / "train_series_descriptions.csv")) == 6294
    coords = load_coordinates(shared / "train_label_coordinates.csv")
    assert len(coords) == 48809 and coords["study_id"].nunique() == 1974
    assert len(load_series_descriptions(shared / "test_series_descriptions.csv")) == 3
    sample = load_submission(shared / "sample_submission.csv")
    assert len(sample) == 25 and np.allclose(sample[list(TARGETS)].sum(1), 1)


def _write(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _train_text(cell="Normal/Mild", study="1"):
    header = ",".join(["study_id", *LABEL_COLUMNS])
    cells = [cell] + ["Normal/Mild"] * (len(LABEL_COLUMNS) - 1)
    good = ",".join(["2", *(["Moderate"] * len(LABEL_COLUMNS))])
    return f"{header}\n{good}\n{study},{','.join(cells)}\n"


def test_train_bad_label_names_file_line_and_column(tmp_path):
    path = _write(tmp_path, _train_text(cell="Mild"))
    with pytest.raises(DataError) as err:
        load_train(path)
    msg = str(err.value)
    assert str(path) in msg and "line 3" in msg and LABEL_COLUMNS[0] in msg and "'Mild'" in msg


def test_train_non_integer_id(tmp_path):
    with pytest.raises(DataError, match=r"line 3, column 'study_id': expected an integer, got '12a'"):
        load_train(_write(tmp_path, _train_text(study="12a")))


def test_train_missing_column(tmp_path):
    text = _train_text().replace(",spinal_canal_stenosis_l1_l2", ",something_else", 1)
    with pytest.raises(DataError, match="missing column.*spinal_canal_stenosis_l1_l2"):
        load_train(_write(tmp_path, text))


def test_train_nan_labels_allowed(tmp_path):
    train = load_train(_write(tmp_path, _train_text(cell="")))
    assert np.isnan(train.loc[1, LABEL_COLUMNS[0]]) and train.loc[0, LABEL_COLUMNS[0]] == 1


def test_coordinates_bad_condition_and_level(tmp_path):
    head = "study_id,series_id,instance_number,condition,level,x,y\n"
    ok = "1,2,3,Spinal Canal Stenosis,L1/L2,10.5,20\n"
    with pytest.raises(DataError, match=r"line 3, column 'condition': unknown condition 'Spinal Stenosis'"):
        load_coordinates(_write(tmp_path, head + ok + "1,2,3,Spinal Stenosis,L1/L2,1,2\n"))
    with pytest.raises(DataError, match=r"line 2, column 'level': unknown level 'L1-L2'"):
        load_coordinates(_write(tmp_path, head + "1,2,3,Spinal Canal Stenosis,L1-L2,1,2\n"))
    with pytest.raises(DataError, match=r"column 'instance_number': expected an integer, got '3.5'"):
        load_coordinates(_write(tmp_path, head + "1,2,3.5,Spinal Canal Stenosis,L1/L2,1,2\n"))
    with pytest.raises(DataError, match=r"column 'x': expected a finite number"):
        load_coordinates(_write(tmp_path, head + "1,2,3,Spinal Canal Stenosis,L1/L2,nan,2\n"))


def test_predicted_coordinates_read_their_neighbouring_slices(tmp_path):
    head = "study_id,series_id,instance_number,condition,level,x,y,confidence,alt_instance_number,alt_weight\n"
    rows = "1,2,3,Spinal Canal Stenosis,L1/L2,10.5,20,0.9,,0.0\n1,4,6,Left Subarticular Stenosis,L1/L2,3,4,0.8,7,0.25\n"
    coords = load_coordinates(_write(tmp_path, head + rows))
    assert np.isnan(coords.loc[0, "alt_instance_number"]) and coords.loc[1, "alt_instance_number"] == 7
    assert coords["alt_weight"].tolist() == [0.0, 0.25]
    with pytest.raises(DataError, match=r"line 3, column 'alt_instance_number': expected an integer or nothing, got '7.5'"):
        load_coordinates(_write(tmp_path, head + rows.replace(",7,", ",7.5,")))
    with pytest.raises(DataError, match=r"line 3, column 'alt_weight': expected a weight in \[0, 1\], got '1.5'"):
        load_coordinates(_write(tmp_path, head + rows.replace("0.25", "1.5")))
    with pytest.raises(DataError, match=r"missing column\(s\) \['alt_weight'\]"):
        load_coordinates(_write(tmp_path, head.replace(",alt_weight", "") + "1,2,3,Spinal Canal Stenosis,L1/L2,1,2,0.9,\n"))


def test_series_descriptions_unknown(tmp_path):
    path = _write(tmp_path, "study_id,series_id,series_description\n1,2,Sagittal T1\n1,3,Coronal T2\n")
    with pytest.raises(DataError, match="line 3.*unknown series description 'Coronal T2'"):
        load_series_descriptions(path)
    with pytest.warns(UserWarning, match="Coronal T2"):
        kept = load_series_descriptions(path, strict=False)
    assert kept["series_id"].tolist() == [2]


def test_lenient_series_descriptions_drop_bad_lines_naming_the_study(tmp_path):
    path = _write(tmp_path, "study_id,series_id,series_description\n1,2,Sagittal T1\n1,2,Sagittal T1\n"
                            "x,4,Axial T2\n5,6,Axial T2\n")
    with pytest.raises(DataError, match="line 4, column 'study_id': expected an integer"):
        load_series_descriptions(path)
    problems = []
    with pytest.warns(UserWarning, match="line 3, study 1: repeats series 2"):
        kept = load_series_descriptions(path, strict=False, problems=problems)
    assert kept.values.tolist() == [[1, 2, "Sagittal T1"], [5, 6, "Axial T2"]]
    assert [(sid, lost) for sid, lost, _ in problems] == [(1, False), (None, True)] and "line 4" in problems[1][2]


def test_row_ids_and_header_only_files_are_named(tmp_path):
    head = "row_id,normal_mild,moderate,severe\n"
    bad = _write(tmp_path, head + "1_spinal_canal_stenosis_l1_l2,1,0,0\n../../x_spinal_canal_stenosis_l1_l2,1,0,0\n")
    with pytest.raises(DataError, match=r"line 3, column 'row_id': '../../x_spinal_canal_stenosis_l1_l2' is not"):
        load_submission(bad)
    assert len(load_submission(bad, strict=False)) == 2
    with pytest.raises(DataError, match="'7_spinal_canal_stenosis_l9_l9' is not"):
        load_submission(_write(tmp_path, head + "7_spinal_canal_stenosis_l9_l9,1,0,0\n"))
    with pytest.raises(DataError, match="no studies"):
        load_train(_write(tmp_path, "study_id," + ",".join(LABEL_COLUMNS) + "\n"))


def test_missing_file_and_garbage(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_train(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="missing column"):
        load_submission(_write(tmp_path, "a,b\n1,2\n"))


def test_solution_frame_and_row_order(tmp_path):
    train = pd.DataFrame({"study_id": [5, 7]})
    for i, col in enumerate(LABEL_COLUMNS):
        train[col] = [i % 3, np.nan if i == 0 else 2]
    sol = solution_frame(train)
    assert len(sol) == 49  # one NaN label left out
    assert set(sol["sample_weight"]) == {1.0, 2.0, 4.0}
    assert np.allclose(sol[list(TARGETS)].sum(1), 1)
    row = sol.set_index("row_id").loc["7_spinal_canal_stenosis_l2_l3"]
    assert row["severe"] == 1 and row["sample_weight"] == 4
    assert len(solution_frame(train, [7])) == 24
    ids = submission_row_ids([7, 5])
    assert len(ids) == 50 and ids[0].startswith("7_left_neural") and ids[25].startswith("5_")
    sol.to_csv(tmp_path / "sol.csv", index=False)
    assert load_solution(tmp_path / "sol.csv").equals(sol)


def test_label_probabilities_from_a_synthetic_latent_table(tmp_path):
    """{split}_latent.csv's p_* columns become the TARGETS' columns per row_id; a bad cell is named."""
    header = "row_id,study_id,severity,label,p_normal_mild,p_moderate,p_severe\n"
    good = header + "1_spinal_canal_stenosis_l1_l2,1,0.5,1,0.1,0.85,0.05\n"
    table = load_label_probabilities(_write(tmp_path, good, "test_latent.csv"))
    assert list(table.columns) == ["row_id", *TARGETS]
    assert table.loc[0, list(TARGETS)].tolist() == [0.1, 0.85, 0.05]
    with pytest.raises(DataError, match=r"test_latent.csv: line 2, column 'p_severe'"):
        load_label_probabilities(_write(tmp_path, good.replace("0.05", "x"), "test_latent.csv"))
