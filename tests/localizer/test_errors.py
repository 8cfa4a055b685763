import numpy as np
import pytest

from src.data.cache import load_series, prepare, series_cache_path
from src.data.tables import load_coordinates
from src.localizer.errors import point_errors, summarize_errors


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # no confidences: their medians are empty
@pytest.mark.parametrize("shift_slices", [0, 1, 2])
def test_signed_errors_say_which_way_and_how_many_slices(synth_dir, tmp_path, shift_slices):
    prepare(synth_dir, tmp_path, "train", workers=1)
    truth = load_coordinates(synth_dir / "train_label_coordinates.csv")
    truth = truth[truth["condition"] == "Spinal Canal Stenosis"].head(5).reset_index(drop=True)
    pred = truth.copy()
    for i, r in truth.iterrows():
        series = load_series(series_cache_path(tmp_path, "train", r["study_id"], r["series_id"]))
        k = series.index_of_instance(r["instance_number"]) + shift_slices
        pred.at[i, "instance_number"] = int(series.instance_numbers[min(k, len(series) - 1)])
    pred["x"] += 3.0
    pred["y"] -= 1.0
    errors = point_errors(pred, truth, tmp_path, "train")
    series = load_series(series_cache_path(tmp_path, "train", truth.at[0, "study_id"], truth.at[0, "series_id"]))
    row_mm, col_mm = series.spacings[0]
    assert np.allclose(errors["dx_mm"], 3.0 * col_mm, atol=0.05) and np.allclose(errors["dy_mm"], -row_mm, atol=0.05)
    assert (errors["dslice"] == shift_slices).all() and (errors["instance_ok"] == (shift_slices <= 1)).all()
    assert summarize_errors(errors)["right_slice"].iloc[0] == float(shift_slices <= 1)
    missed = point_errors(pred.iloc[1:], truth, tmp_path, "train")
    assert missed[["dx_mm", "dy_mm", "dslice"]].iloc[0].isna().all() and not missed["instance_ok"].iloc[0]
