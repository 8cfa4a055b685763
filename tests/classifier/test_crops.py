import numpy as np
import pydicom
import pytest

from src.classifier.crops import CropSpec, build_crops, crop_table, cut_crop
from src.data.cache import load_series, prepare, series_cache_path
from src.data.dicom import Series, read_series
from src.data.tables import load_coordinates, load_series_descriptions


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


def test_block_edge_slice_never_borrows_the_next_block():
    """An axial series of two 3-slice blocks 30 mm apart, each angled to its disc: the crop of a block's
    edge slice repeats its own block's nearest slice instead of taking the other block's first one."""
    blocks = []
    for z0, tilt in ((0.0, 6.0), (30.0, -6.0)):
        t = np.deg2rad(tilt)
        o = np.array([1.0, 0, 0, 0, np.cos(t), np.sin(t)])
        n = np.cross(o[:3], o[3:])
        blocks += [(np.array([0.0, 0.0, z0]) + k * 3.0 * n - 30 * o[3:] - 40 * o[:3], o) for k in (-1, 0, 1)]
    s = Series(path=None, volume=np.zeros((6, 60, 80), np.float32), instance_numbers=np.arange(6, 0, -1),
               positions=np.stack([p for p, _ in blocks]), orientations=np.stack([o for _, o in blocks]),
               spacings=np.ones((6, 2)))
    for k in range(6):
        s.volume[k] = 0.1 * (k + 1)  # each slice its own grey level
    crop = cut_crop(s, 2, 40.0, 30.0, size_mm=10.0, size_px=8, n_slices=5)  # the upper edge of block 1
    raw = crop[:, 4, 4]
    assert raw[0] < raw[1] < raw[2] == raw[3] == raw[4]  # slices 0, 1, 2, then slice 2 again (not 3 or 4)
    crop = cut_crop(s, 3, 40.0, 30.0, size_mm=10.0, size_px=8, n_slices=3)  # the lower edge of block 2
    assert crop[0, 4, 4] == crop[1, 4, 4] < crop[2, 4, 4]


def test_cache_round_trip_and_idempotent(synth_dir, tmp_path):
    counts = prepare(synth_dir, tmp_path, "train", workers=1)
    series = load_series_descriptions(synth_dir / "train_series_descriptions.csv")
    assert counts["written"] == len(series) and counts["failed"] == 0
    assert prepare(synth_dir, tmp_path, "train", workers=1)["cached"] == len(series)
    r = series.iloc[0]
    cached = load_series(series_cache_path(tmp_path, "train", r.study_id, r.series_id))
    with _nowarn():
        direct = read_series(synth_dir / "train_images" / str(r.study_id) / str(r.series_id))
    # 8-bit JPEG at quality 95: small errors, below the images' own noise.
    assert np.abs(cached.volume - direct.volume).mean() < 2.5 / 255 and np.abs(cached.volume - direct.volume).max() < 0.15
    assert np.array_equal(cached.instance_numbers, direct.instance_numbers)
    assert np.allclose(cached.positions, direct.positions) and cached.description == r.series_description


def test_lossless_codec_and_bytes_per_pixel(synth_dir, tmp_path):
    from src.data.cache import decode_volume, encode_volume

    with _nowarn():
        volume = read_series(next((synth_dir / "train_images").glob("*/*"))).volume
    png = decode_volume(*encode_volume(volume, "png"))
    assert np.abs(png - volume).max() <= 0.5 / 255 + 1e-6  # only the 8-bit rounding
    data, offsets = encode_volume(volume, "jpeg")
    assert len(offsets) == len(volume) + 1 and len(data) < 0.8 * volume.size  # under a byte per pixel


def test_cache_is_never_stale(synth_dir, tmp_path):
    """An edited series is decoded again, a deleted one leaves the cache, crops follow the new entry."""
    import os
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data, ignore=shutil.ignore_patterns("test_images"))
    cache = tmp_path / "cache"
    series = load_series_descriptions(data / "train_series_descriptions.csv")
    prepare(data, cache, "train", workers=1)
    r = series.iloc[0]
    folder = data / "train_images" / str(r.study_id) / str(r.series_id)
    coords = load_coordinates(data / "train_label_coordinates.csv")
    spec = CropSpec(n_slices=3, size_px=16)
    mine = coords[coords["series_id"] == r.series_id]
    before, _ = build_crops(mine, cache, "train", spec, cache / "crops", workers=1)
    for f in folder.glob("*.dcm"):  # the same files, edited: a flat image
        ds = pydicom.dcmread(f)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.PixelData = np.full_like(ds.pixel_array, 7).tobytes()
        ds.save_as(f)
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    counts = prepare(data, cache, "train", workers=1)
    assert counts["written"] == 1 and counts["cached"] == len(series) - 1
    assert load_series(series_cache_path(cache, "train", r.study_id, r.series_id)).volume.max() == 0.0
    after, _ = build_crops(mine, cache, "train", spec, cache / "crops", workers=1)
    assert np.abs(np.asarray(before, np.float32)).max() > 0 and np.abs(np.asarray(after, np.float32)).max() == 0
    shutil.rmtree(folder)
    with pytest.warns(UserWarning, match="series folder not found"):
        assert prepare(data, cache, "train", workers=1)["missing"] == 1
    assert not series_cache_path(cache, "train", r.study_id, r.series_id).exists()


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


def test_crop_store_is_8bit_and_served_in_unit_range(synth_dir, tmp_path):
    import torch

    from src.classifier.augment import DeviceAugment, eval_transform
    from src.classifier.datasets import CropDataset
    from src.core.config import DEFAULTS

    prepare(synth_dir, tmp_path, "train", workers=1)
    coords = load_coordinates(synth_dir / "train_label_coordinates.csv")
    crops, index = build_crops(coords, tmp_path, "train", CropSpec(n_slices=3, size_px=16), tmp_path / "crops", workers=1)
    assert crops.dtype == np.uint8 and crops.max() == 255  # each crop is windowed to [0, 1] before storing
    served = CropDataset(crops, index, eval_transform(16))[0]["image"]
    assert served.dtype == torch.float32 and 0 <= float(served.min()) and float(served.max()) <= 1
    raw = CropDataset(crops, index, None).__getitems__([0, 1])
    out, _ = DeviceAugment(dict(DEFAULTS["aug"], affine_p=0, hflip=0, noise_p=0), 16)(
        torch.stack([r["image"] for r in raw]), torch.zeros(2, dtype=torch.long))
    assert torch.allclose(out[0], served, atol=1e-6)  # the device path sees what the CPU path sees


@pytest.mark.filterwarnings("ignore")
def test_generated_axial_crops_stay_in_their_block(variety_dir):
    """On generated axial series (blocks angled along each disc, several series, instance order against
    position), every slice of a labelled point's crop lies within two gaps of it along its slice's normal."""
    from src.classifier.crops import neighbour_slices

    coords = load_coordinates(variety_dir / "train_label_coordinates.csv")
    axial = coords[coords["condition"].str.contains("Subarticular")]
    loaded = {}
    blocks = 0
    for r in axial.itertuples():
        if r.series_id not in loaded:
            loaded[r.series_id] = read_series(variety_dir / "train_images" / str(r.study_id) / str(r.series_id))
        s = loaded[r.series_id]
        blocks += s.n_orientation_groups > 1
        k = s.index_of_instance(r.instance_number)
        centre = s.pixel_to_patient(k, r.x, r.y)
        for j in neighbour_slices(s, k, 5, centre):
            assert abs(float(s.patient_to_pixel(j, centre)[2])) <= 2.2 * s.slice_gap, (r.series_id, k, j)
    assert blocks > 0


def test_jittered_variants_draw_the_measured_errors_or_normal_offsets(synth_dir):
    import pandas as pd

    from src.classifier.crops import jittered

    coords = load_coordinates(synth_dir / "train_label_coordinates.csv")
    errors = pd.DataFrame({"condition": ["Spinal Canal Stenosis", "Spinal Canal Stenosis", "Left Neural Foraminal Narrowing"],
                           "dx_mm": [3.0, np.nan, -1.0], "dy_mm": [-2.0, 0.0, 4.0], "dslice": [1.0, 0.0, -1.0]})
    table = jittered(coords, 2, errors, seed=1)
    assert len(table) == 3 * len(coords) and sorted(table["variant"].unique()) == [0, 1, 2]
    assert (table.loc[table["variant"] == 0, ["dx_mm", "dy_mm", "dslice"]] == 0).all().all()
    moved = table[table["variant"] > 0]
    spinal = moved[moved["condition"] == "Spinal Canal Stenosis"]
    assert (spinal[["dx_mm", "dy_mm", "dslice"]].to_numpy() == [3.0, -2.0, 1.0]).all()  # the miss (NaN) is skipped
    other = moved[moved["condition"] == "Right Subarticular Stenosis"]  # no errors of its own: the whole pool
    assert set(other["dx_mm"]) <= {3.0, -1.0} and len(other)
    normal = jittered(coords, 3, None, mm=2.0, slices=0.5, seed=0)
    drawn = normal[normal["variant"] > 0]
    assert 1.6 < drawn["dx_mm"].std() < 2.4 and (drawn["dslice"] == drawn["dslice"].round()).all()
    assert drawn["dslice"].abs().max() >= 1


def test_a_jittered_variant_is_the_crop_of_the_moved_point(synth_dir, tmp_path):
    prepare(synth_dir, tmp_path, "train", workers=1)
    coords = load_coordinates(synth_dir / "train_label_coordinates.csv")
    row = coords[coords["condition"] == "Spinal Canal Stenosis"].iloc[[2]].reset_index(drop=True)
    series = load_series(series_cache_path(tmp_path, "train", row.at[0, "study_id"], row.at[0, "series_id"]))
    k = series.index_of_instance(row.at[0, "instance_number"])
    row_mm, col_mm = series.spacings[k + 1]
    spec = CropSpec(n_slices=3, size_px=24)
    variant = row.assign(variant=1, dx_mm=3 * col_mm, dy_mm=-2 * row_mm, dslice=1.0)
    table = __import__("pandas").concat([row.assign(variant=0, dx_mm=0.0, dy_mm=0.0, dslice=0.0), variant])
    crops, index = build_crops(table, tmp_path, "train", spec, tmp_path / "crops", workers=1)
    moved = row.assign(instance_number=int(series.instance_numbers[k + 1]), x=row.at[0, "x"] + 3, y=row.at[0, "y"] - 2)
    expected, _ = build_crops(moved, tmp_path, "train", spec, tmp_path / "crops", workers=1)
    plain, _ = build_crops(row, tmp_path, "train", spec, tmp_path / "crops", workers=1)
    assert list(index["variant"]) == [0, 1]
    assert np.array_equal(crops[index["crop"][1]], expected[0]) and np.array_equal(crops[index["crop"][0]], plain[0])
    assert not np.array_equal(crops[index["crop"][1]], plain[0])


@pytest.mark.filterwarnings("ignore")
def test_other_views_put_each_point_on_the_nearest_slice_of_the_other_series(variety_dir, tmp_path):
    from src.classifier.crops import other_views
    from src.core.constants import SAGITTAL_T2

    prepare(variety_dir, tmp_path, "train", workers=1)
    coords = load_coordinates(variety_dir / "train_label_coordinates.csv")
    descriptions = load_series_descriptions(variety_dir / "train_series_descriptions.csv")
    views = other_views(coords, descriptions, tmp_path, "train", {"foraminal": ["sagittal_t2"], "spinal": []})
    foramina = coords[coords["condition"].str.contains("Foraminal")]
    t2 = descriptions[descriptions["series_description"] == SAGITTAL_T2].drop_duplicates("study_id")
    assert 0.5 * foramina["study_id"].isin(t2["study_id"]).sum() < len(views) <= foramina["study_id"].isin(t2["study_id"]).sum()
    assert set(views["condition"]) <= set(foramina["condition"]) and (views["view"] == 1).all()
    assert (views["view_type"] == "sagittal_t2").all()
    assert (views["series_id"].to_numpy() == views["study_id"].map(dict(zip(t2["study_id"], t2["series_id"]))).to_numpy()).all()
    merged = foramina.merge(views, on=["study_id", "condition", "level"], suffixes=("", "_view"))
    for r in merged.itertuples():
        source = load_series(series_cache_path(tmp_path, "train", r.study_id, r.series_id), pixels=False)
        target = load_series(series_cache_path(tmp_path, "train", r.study_id, r.series_id_view), pixels=False)
        point = source.pixel_to_patient(source.index_of_instance(r.instance_number), r.x, r.y)
        j = target.index_of_instance(r.instance_number_view)
        x, y, depth = target.patient_to_pixel(j, point)
        assert np.allclose([x, y], [r.x_view, r.y_view]) and abs(float(depth)) <= 0.5 * target.slice_gap + 1e-6
        assert abs(float(depth)) == pytest.approx(target.nearest_slice(point)[1], abs=1e-6)
    # A study without the other type keeps only its own crops; nothing named, nothing added.
    lacking = int(t2["study_id"].iloc[0])
    fewer = other_views(coords, descriptions[~descriptions["series_id"].isin(t2["series_id"].iloc[:1])], tmp_path,
                        "train", {"foraminal": ["sagittal_t2"]})
    assert lacking not in set(fewer["study_id"]) and len(fewer) == len(views) - (views["study_id"] == lacking).sum()
    assert other_views(coords, descriptions, tmp_path, "train", {"foraminal": []}).empty


def test_other_views_take_the_nearest_slice_over_every_series_of_the_type(variety_dir, tmp_path):
    """An axial study is often several stacks: a spinal point goes to whichever stack holds it nearest."""
    from src.classifier.crops import other_views
    from src.core.constants import AXIAL_T2

    prepare(variety_dir, tmp_path, "train", workers=1)
    coords = load_coordinates(variety_dir / "train_label_coordinates.csv")
    descriptions = load_series_descriptions(variety_dir / "train_series_descriptions.csv")
    views = other_views(coords, descriptions, tmp_path, "train", {"spinal": ["axial"]})
    axial = descriptions[descriptions["series_description"] == AXIAL_T2].groupby("study_id")["series_id"].agg(list)
    assert len(views) and (views["view_type"] == "axial").all() and views["condition"].str.startswith("Spinal").all()
    spinal = coords[coords["condition"].str.startswith("Spinal")].set_index(["study_id", "level"])
    later_stack = 0
    for r in views.itertuples():
        o = spinal.loc[(r.study_id, r.level)]
        source = load_series(series_cache_path(tmp_path, "train", r.study_id, o.series_id), pixels=False)
        point = source.pixel_to_patient(source.index_of_instance(o.instance_number), o.x, o.y)
        depths = {}
        for series_id in axial[r.study_id]:
            stack = load_series(series_cache_path(tmp_path, "train", r.study_id, series_id), pixels=False)
            depths[series_id] = stack.nearest_slice(point)[1]
        assert r.series_id in depths and depths[r.series_id] == pytest.approx(min(depths.values()), abs=1e-6)
        later_stack += r.series_id != axial[r.study_id][0]
    assert later_stack > 0  # the fixture's several-stack studies put some points on a stack after the first
