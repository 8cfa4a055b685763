import numpy as np
import pytest

from src.crops import CropSpec, build_crops
from src.localizer.infer import Localizer
from src.localizer.plan import PARTS, PLAN
from src.tables import load_coordinates, load_series_descriptions
from conftest import make_fake_runs
from test_localizer_decode import _axial, _sagittal


@pytest.mark.filterwarnings("ignore")
def test_localize_output_round_trips_and_survives_a_missing_series(synth_dir, tmp_path):
    import shutil

    import localize as localize_script

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    series = load_series_descriptions(data / "test_series_descriptions.csv")
    victim = series[series["series_description"] == "Sagittal T1"].iloc[0]
    shutil.rmtree(data / "test_images" / str(victim.study_id) / str(victim.series_id))
    make_fake_runs(tmp_path / "runs", classifiers=False)
    out = tmp_path / "pred.csv"
    localize_script.main(["--data-dir", str(data), "--split", "test", "--runs", str(tmp_path / "runs"),
                          "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"])
    coords = load_coordinates(out)
    assert set(coords["study_id"]) == set(series["study_id"])
    hit = coords[coords["study_id"] == victim.study_id]
    assert not hit["condition"].str.contains("Foraminal").any()
    assert (hit["condition"] == "Spinal Canal Stenosis").sum() == 5
    assert (hit["condition"].str.contains("Subarticular")).sum() == 10
    full = coords[coords["study_id"] != victim.study_id]
    assert full.groupby("study_id").size().eq(25).all()
    # The predicted table feeds the crop code unchanged.
    crops, index = build_crops(coords, tmp_path / "cache", "test", CropSpec(n_slices=3, size_px=16), tmp_path / "crops", workers=1)
    assert len(index) == len(coords) and crops.shape[1:] == (3, 20, 20)


DISC_ROWS = [5, 14, 23, 32, 41]  # heatmap rows of the five discs: patient z = 39, 21, 3, -15, -33 mm


class _Planted(Localizer):
    """A Localizer whose heatmaps are planted: the five discs on every searched slice, two recesses on axial ones."""

    def __init__(self):
        import torch

        super().__init__({p.key: [(None, {"loc": {"size_px": 100}})] for p in PLAN}, torch.device("cpu"))
        self.calls: list[tuple[str, list[int]]] = []

    def heatmaps(self, part, series, ks):
        self.calls.append((part.key, list(ks)))
        heat = np.zeros((len(ks), part.channels, 50, 50), np.float32)
        if part.searched:
            for c, r in enumerate(DISC_ROWS):
                heat[:, c, r, 20] = 0.9
        else:
            heat[:, 0, 20, 10], heat[:, 0, 20, 30] = 0.8, 0.7
        return heat


def _study(with_t2=True):
    upper, lower = _axial([36.0, 39.0, 42.0]), _axial([-33.0, -15.0, 3.0, 21.0])
    series = {PARTS["sagittal_t1"].description: [(11, _sagittal(n=5))],
              PARTS["axial"].description: [(21, upper), (22, lower)]}
    if with_t2:
        series[PARTS["sagittal_t2"].description] = [(10, _sagittal(n=3))]
    return series


@pytest.mark.parametrize("with_t2", [True, False])
def test_study_follows_the_plan_and_picks_axial_slices_by_3d_distance(with_t2):
    loc = _Planted()
    rows = loc.study(7, _study(with_t2))
    assert [key for key, _ in loc.calls][: 1 + with_t2] == [p.key for p in PLAN if p.searched][1 - with_t2:]
    assert len(rows) == (25 if with_t2 else 20) and {r["study_id"] for r in rows} == {7}
    axial = {(r["level"], r["condition"]): r for r in rows if "Subarticular" in r["condition"]}
    assert len(axial) == 10
    # L1/L2 (z = 39) lies in the upper axial series, on its middle slice; the other levels in the lower one.
    expected = {"L1/L2": (21, 2), "L2/L3": (22, 4), "L3/L4": (22, 3), "L4/L5": (22, 2), "L5/S1": (22, 1)}
    for (level, _), r in axial.items():
        assert (r["series_id"], r["instance_number"]) == expected[level], level
    # Left is the peak at larger patient x: heatmap column 30 -> input pixel 60.5 of 100 -> image pixel 48.3 of 80.
    left = axial[("L3/L4", "Left Subarticular Stenosis")]
    assert left["x"] == pytest.approx((30.5 * 2) * 80 / 100 - 0.5, abs=0.5)


def test_study_without_models_or_series_returns_what_it_can():
    loc = _Planted()
    loc.models["axial"] = []  # no trained axial localizer
    rows = loc.study(7, _study())
    assert {r["condition"] for r in rows} == set(PARTS["sagittal_t2"].conditions + PARTS["sagittal_t1"].conditions)
    assert loc.study(7, {}) == []
