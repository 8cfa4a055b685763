import numpy as np
import pandas as pd
import pytest
import torch

from src.crops import CropSpec, build_crops
from src.dicom import Series
from src.localization import (
    SliceDataset,
    SliceStore,
    decode_sagittal,
    gaussian_heatmaps,
    loc_transform,
    assign_levels,
    refine_peak,
    side_of_slices,
    to_pixels,
)
from src.models import HeatmapNet
from src.tables import load_coordinates, load_series_descriptions
from conftest import make_fake_runs


def _sagittal(n=5, gap=4.0):
    # Rows go posterior (+y), columns go inferior (-z); slices are stacked along -x (patient right).
    o = np.array([0, 1.0, 0, 0, 0, -1.0])
    return Series(None, np.zeros((n, 100, 100), np.float32), np.arange(1, n + 1),
                  np.array([[-(k - n // 2) * gap, -50.0, 50.0] for k in range(n)]), np.tile(o, (n, 1)), np.ones((n, 2)))


def _axial(zs):
    o = np.array([1.0, 0, 0, 0, 1.0, 0])
    return Series(None, np.zeros((len(zs), 80, 80), np.float32), np.arange(1, len(zs) + 1),
                  np.array([[-40.0, -40.0, z] for z in zs]), np.tile(o, (len(zs), 1)), np.full((len(zs), 2), 1.0))


def test_sagittal_point_lands_on_the_axial_slice_through_it():
    sag, ax = _sagittal(), _axial(np.arange(-20, 21, 4.0))
    point = sag.pixel_to_patient(2, 30.0, 57.0)  # x=0 plane, y = -50 + 30, z = 50 - 57 = -7
    assert np.allclose(point, [0, -20, -7])
    k, dist = ax.nearest_slice(point)
    assert ax.positions[k, 2] == -8.0 and dist == pytest.approx(1.0)
    x, y, _ = ax.patient_to_pixel(k, point)
    assert (x, y) == pytest.approx((40.0, 20.0))


def test_slice_sides_follow_patient_left():
    # Slice k sits at patient x = 8, 4, 0, -4, -8 mm; +x is the patient's left.
    assert side_of_slices(_sagittal(n=5), midline=np.array([0.0, 0, 0])).tolist() == [1, 1, 1, -1, -1]
    assert side_of_slices(_sagittal(n=5), midline=np.array([1.0, 0, 0])).tolist() == [1, 1, -1, -1, -1]
    assert side_of_slices(_sagittal(n=5), midline=None).tolist() == [1, 1, 1, -1, -1]  # series centre


def test_assign_levels_fixes_a_channel_firing_on_the_next_disc():
    # Three discs at 0, 36 and 72 mm; level 1's channel is strongest on disc 2 but must take disc 1.
    scores = np.array([[0.9, 0.1, 0.1], [0.1, 0.4, 0.8], [0.1, 0.1, 0.9]])
    assert assign_levels(scores, np.array([0.0, 36.0, 72.0]), 15.0) == [0, 1, 2]
    # Peaks given out of order come back ordered; too few separate peaks give None.
    assert assign_levels(scores[:, [2, 0, 1]], np.array([72.0, 0.0, 36.0]), 15.0) == [1, 2, 0]
    assert assign_levels(scores, np.array([0.0, 5.0, 72.0]), 15.0) is None


def test_decode_sagittal_orders_levels_on_planted_heatmaps():
    s = _sagittal(n=3)
    heat = np.zeros((3, 5, 50, 50), np.float32)
    rows = [5, 14, 23, 32, 41]  # heatmap rows of the five discs, head to feet
    for c, r in enumerate(rows):
        heat[1, c, r, 20] = 0.9
    heat[1, 2, rows[3], 20] = 0.95  # level 3 fires harder on the disc of level 4
    out = decode_sagittal("sagittal_t2", s, heat, np.arange(3), 100, 1, 2)
    ys = [r["y"] for r in out]
    assert [r["level"] for r in out] == ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]
    assert ys == sorted(ys) and len(set(np.round(ys))) == 5
    assert all(r["instance_number"] == 2 for r in out)


def test_heatmap_targets_and_peak_decoding():
    target = gaussian_heatmaps(np.array([[0, 20.0, 11.0, 1.0], [1, 5.0, 5.0, 0.5]]), 2, 64, 2.0)
    assert target.shape == (2, 32, 32) and target[0].max() == pytest.approx(1.0, abs=0.05)
    assert target[1].max() == pytest.approx(0.5, abs=0.05)
    y, x = np.unravel_index(np.argmax(target[0]), target[0].shape)
    ry, rx = refine_peak(target[0], y, x)
    px, py = to_pixels((ry, rx), 64, (128, 256))  # back to a 256 x 128 (w x h) original image
    assert px == pytest.approx((20.0 + 0.5) * 4 - 0.5, abs=0.6) and py == pytest.approx((11.0 + 0.5) * 2 - 0.5, abs=0.3)


def test_tiny_heatmap_net_learns_planted_keypoints():
    """Bright blobs at random places: a small HeatmapNet finds them within about a pixel."""
    rng = np.random.default_rng(0)
    n, size = 96, 48
    yy, xx = np.mgrid[0:size, 0:size]
    images, points = [], []
    for i in range(n):
        x, y = rng.uniform(6, size - 6, 2)
        img = rng.normal(0.2, 0.03, (size, size)) + np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0)
        images.append(img.astype(np.float16))
        points.append({"slice": i, "channel": 0, "x": x, "y": y, "amplitude": 1.0, "condition": "c", "level": "L1/L2"})
    index = pd.DataFrame({"study_id": 1, "series_id": np.arange(n), "k": 0, "n": 1, "instance_number": 1,
                          "h": size, "w": size, "first": -1})
    store = SliceStore(np.stack(images), index, pd.DataFrame(points))
    torch.manual_seed(0)
    net = HeatmapNet("resnet10t", 3, 1, model_kwargs={"channels": (8, 16, 32, 32), "stem_width": 8}, decoder_channels=16)
    ds = SliceDataset(store, np.arange(64), 1, 1.5, loc_transform(False))
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    for _ in range(25):
        for batch in loader:
            logits = net(batch["image"])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["target"], weight=1 + 20 * batch["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    test = SliceDataset(store, np.arange(64, n), 1, 1.5, loc_transform(False))
    errors = []
    with torch.no_grad():
        for i in range(len(test)):
            heat = torch.sigmoid(net(test[i]["image"][None]))[0, 0].numpy()
            y, x = np.unravel_index(np.argmax(heat), heat.shape)
            px, py = to_pixels(refine_peak(heat, y, x), size, (size, size))
            errors.append(np.hypot(px - points[64 + i]["x"], py - points[64 + i]["y"]))
    assert np.median(errors) < 1.5, np.median(errors)


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
