import numpy as np
import pandas as pd
import pytest

from src.core.constants import AXIAL_T2, SAGITTAL_T2
from src.data import geometry
from src.data.dicom import read_series
from src.synth.render import rotation


def test_pixel_patient_round_trip_oblique():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rot = rotation(rng, (30, 30, 30))
        orientation = np.concatenate([rot[:, 0], rot[:, 1]])
        position = rng.uniform(-200, 200, 3)
        spacing = rng.uniform(0.3, 1.2, 2)
        x, y = rng.uniform(-10, 600, 50), rng.uniform(-10, 600, 50)
        p = geometry.pixel_to_patient(x, y, position, orientation, spacing)
        x2, y2, d = geometry.patient_to_pixel(p, position, orientation, spacing)
        back = geometry.pixel_to_patient(x2, y2, position, orientation, spacing)
        assert np.abs(back - p).max() < 0.01
        assert np.abs(d).max() < 1e-9
        # A point off the plane reports its distance along the normal.
        n = geometry.slice_normal(orientation)
        _, _, d5 = geometry.patient_to_pixel(p + 5.0 * n, position, orientation, spacing)
        assert np.allclose(d5, 5.0)


def test_pixel_spacing_order():
    # PixelSpacing is (row, column): a step in x moves by the column spacing along the row direction.
    p = geometry.pixel_to_patient(1.0, 0.0, [0, 0, 0], [1, 0, 0, 0, 1, 0], [0.5, 2.0])
    q = geometry.pixel_to_patient(0.0, 1.0, [0, 0, 0], [1, 0, 0, 0, 1, 0], [0.5, 2.0])
    assert np.allclose(p, [2.0, 0, 0]) and np.allclose(q, [0, 0.5, 0])


def test_nearest_slice_respects_image_bounds():
    positions = np.array([[0, 0, z] for z in (0.0, 4.0, 8.0)] + [[500, 500, 5.0]])
    orientations = np.tile([1, 0, 0, 0, 1, 0], (4, 1))
    spacings = np.ones((4, 2))
    shapes = np.full((4, 2), 100)
    assert geometry.nearest_slice([10, 10, 5.1], positions, orientations)[0] == 3  # planes only
    i, d = geometry.nearest_slice([10, 10, 5.1], positions, orientations, spacings, shapes)
    assert i == 1 and abs(d - 1.1) < 1e-9
    assert geometry.nearest_slice([-50, 10, 5], positions, orientations, spacings, shapes)[0] == -1


@pytest.mark.filterwarnings("ignore::src.data.dicom.DicomWarning")
def test_sagittal_label_lands_in_axial_canal(synth_dir):
    """A spinal-canal point picked on the sagittal T2 maps to an axial slice near the disc, inside the canal."""
    coords = pd.read_csv(synth_dir / "train_label_coordinates.csv")
    series = pd.read_csv(synth_dir / "train_series_descriptions.csv")
    latent = pd.read_csv(synth_dir / "train_latent.csv")
    spinal = coords[coords["condition"] == "Spinal Canal Stenosis"].merge(series, on=["study_id", "series_id"])
    spinal = spinal[spinal["series_description"] == SAGITTAL_T2].head(6)
    assert len(spinal) > 0
    for row in spinal.itertuples():
        sag = read_series(synth_dir / "train_images" / str(row.study_id) / str(row.series_id))
        point = sag.pixel_to_patient(sag.index_of_instance(row.instance_number), row.x, row.y)
        truth = latent[(latent.study_id == row.study_id) & (latent.condition == row.condition) & (latent.level == row.level)]
        # The label sits on the nearest sagittal slice, so it is off the true point by at most half a gap.
        assert np.linalg.norm(point - truth[["px", "py", "pz"]].to_numpy()[0]) < 0.5 * sag.slice_gap + 1.0
        best = (np.inf, None, None)
        for ax_id in series[(series.study_id == row.study_id) & (series.series_description == AXIAL_T2)].series_id:
            ax = read_series(synth_dir / "train_images" / str(row.study_id) / str(ax_id))
            i, dist = ax.nearest_slice(point)
            if i >= 0 and dist < best[0]:
                best = (dist, ax, i)
        dist, ax, i = best
        assert dist < 6.0, "an axial slice within a few mm of the disc"
        x, y, _ = ax.patient_to_pixel(i, point)
        h, w = ax.shape
        assert 0 <= x < w and 0 <= y < h
