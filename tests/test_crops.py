import numpy as np
import pytest

from src.cache import load_series, prepare, series_cache_path
from src.crops import CropSpec, build_crops, crop_table, cut_crop
from src.dicom import Series, read_series
from src.tables import load_coordinates, load_series_descriptions


def _series(n=5, h=60, w=80, spacing=(0.7, 0.5), tilt_deg=0.0):
    t = np.deg2rad(tilt_deg)
    orientation = np.array([1.0, 0, 0, 0, np.cos(t), np.sin(t)])
    normal = np.cross(orientation[:3], orientation[3:])
    return Series(
        path=None, volume=np.zeros((n, h, w), np.float32), instance_numbers=np.arange(10, 10 + n),
        positions=np.stack([k * 3.0 * normal for k in range(n)]), orientations=np.tile(orientation, (n, 1)),
        spacings=np.tile(spacing, (n, 1)),
    )


def _centroid(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (row, col) of the brightest pixels."""
    w = np.where(image >= 0.5 * image.max(), image, 0)
    rows, cols = np.indices(image.shape)
    return np.array([(w * rows).sum(), (w * cols).sum()]) / w.sum()


@pytest.mark.parametrize("size_px", [32, 33])
def test_dot_lands_at_crop_centre(size_px):
    s = _series()
    s.volume[:] = np.random.default_rng(0).uniform(0, 0.05, s.volume.shape)
    x, y = 47.0, 21.0
    s.volume[2, int(y), int(x)] = 1.0
    crop = cut_crop(s, 2, x, y, size_mm=12.0, size_px=size_px, n_slices=3)
    assert crop.shape == (3, size_px, size_px)
    centre = (size_px - 1) / 2
    assert np.abs(_centroid(crop[1]) - centre).max() <= 0.3
    assert crop.min() >= 0 and crop.max() <= 1


def test_neighbours_and_border_padding():
    s = _series(n=3)
    for k in range(3):
        s.volume[k] = 0.2 * (k + 1)
    crop = cut_crop(s, 0, 1.0, 1.0, size_mm=20.0, size_px=16, n_slices=5)  # corner of the image, first slice
    # Slices before the first repeat it; the part of the square outside the image is zero.
    raw = crop[:, -1, -1]
    assert raw[0] == raw[1] == raw[2] and raw[3] > raw[2] and raw[4] > raw[3]
    assert crop[:, 0, 0].max() == 0.0


def test_tilted_neighbours_follow_the_3d_point():
    s = _series(n=3, tilt_deg=0.0)
    # Shift slice 2's origin in-plane by 4 mm in x: the same 3D point sits 8 px further left on it.
    s.positions[2] = s.positions[2] + np.array([4.0, 0, 0])
    s.volume[1, 30, 40] = 1.0
    s.volume[2, 30, 32] = 1.0
    crop = cut_crop(s, 1, 40.0, 30.0, size_mm=10.0, size_px=21, n_slices=3)
    for k in (1, 2):
        assert np.abs(_centroid(crop[k]) - 10).max() <= 0.3


def test_cache_round_trip_and_idempotent(synth_dir, tmp_path):
    counts = prepare(synth_dir, tmp_path, "train", workers=1)
    series = load_series_descriptions(synth_dir / "train_series_descriptions.csv")
    assert counts["written"] == len(series) and counts["failed"] == 0
    assert prepare(synth_dir, tmp_path, "train", workers=1)["cached"] == len(series)
    r = series.iloc[0]
    cached = load_series(series_cache_path(tmp_path, "train", r.study_id, r.series_id))
    with _nowarn():
        direct = read_series(synth_dir / "train_images" / str(r.study_id) / str(r.series_id))
    assert np.abs(cached.volume - direct.volume).max() < 1e-3
    assert np.array_equal(cached.instance_numbers, direct.instance_numbers)
    assert np.allclose(cached.positions, direct.positions) and cached.description == r.series_description


class _nowarn:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_build_crops_from_labelled_and_predicted_tables(synth_dir, tmp_path):
    prepare(synth_dir, tmp_path, "train", workers=1)
    coords = load_coordinates(synth_dir / "train_label_coordinates.csv")
    spec = CropSpec(n_slices=3, size_px=24)
    crops, index = build_crops(coords, tmp_path, "train", spec, tmp_path / "crops", workers=1)
    assert crops.shape[1:] == (3, 30, 30) and len(index) == len(crop_table(coords))
    assert np.isfinite(np.asarray(crops, dtype=np.float32)).all()
    # A second call reuses the stored crops.
    again, index2 = build_crops(coords, tmp_path, "train", spec, tmp_path / "crops", workers=1)
    assert again.filename == crops.filename and index2.equals(index)
    # A predicted table with one bad instance: that row is dropped and logged, the rest are cut.
    predicted = coords.copy()
    predicted.loc[0, "instance_number"] = 9999
    predicted["x"] += 0.5
    _, index3 = build_crops(predicted, tmp_path, "train", spec, tmp_path / "crops", workers=1)
    assert len(index3) == len(index) - 1
    assert any("instance 9999" in p.read_text() for p in (tmp_path / "crops").glob("*.log"))
