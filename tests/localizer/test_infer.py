import numpy as np
import pytest
from conftest import make_fake_runs
from test_decode import _axial, _sagittal

from src.classifier.crops import CropSpec, build_crops
from src.data.tables import load_coordinates, load_series_descriptions
from src.localizer.infer import Localizer, recentre_midline
from src.localizer.plan import PARTS, PLAN


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
    crops, index = build_crops(coords, tmp_path / "cache", "test", CropSpec(n_slices=3, size_px=16), tmp_path / "crops",
                               workers=1)
    assert len(index) == len(coords) and crops.shape[1:] == (3, 20, 20)


DISC_ROWS = [5, 14, 23, 32, 41]  # heatmap rows of the five discs: patient z = 39, 21, 3, -15, -33 mm


class _Planted(Localizer):
    """A Localizer whose heatmaps are planted: the five discs on every searched slice, two recesses on axial ones."""

    def __init__(self):
        import torch

        super().__init__({p.series_type: [(None, {"loc": {"size_px": 100}})] for p in PLAN}, torch.device("cpu"))
        self.calls: list[tuple[str, list[int]]] = []

    def heatmaps(self, part, slices, stacks=None, faults=None):
        self.calls.append((part.series_type, [k for _, k in slices]))
        heat = np.zeros((len(slices), part.channels, 50, 50), np.float32)
        if part.searched:
            for c, r in enumerate(DISC_ROWS):
                heat[:, c, r, 20] = heat[:, part.any_channel, r, 20] = 0.9
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
    assert [key for key, _ in loc.calls][: 1 + with_t2] == [p.series_type for p in PLAN if p.searched][1 - with_t2:]
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


class _WeakOn(_Planted):
    """_Planted, with a tenth of the heat on the slices of one series (a blurred repeat acquisition)."""

    def __init__(self, weak):
        super().__init__()
        self.weak = weak

    def heatmaps(self, part, slices, stacks=None, faults=None):
        heat = super().heatmaps(part, slices, stacks, faults)
        heat[[i for i, (s, _) in enumerate(slices) if s is self.weak]] *= 0.1
        return heat


def test_a_study_with_two_series_of_a_type_keeps_the_more_confident_reading():
    weak, good = _sagittal(n=5), _sagittal(n=5)
    for first, second, expected in ((weak, good, 12), (good, weak, 11)):
        series = dict(_study(), **{PARTS["sagittal_t1"].description: [(11, first), (12, second)]})
        loc = _WeakOn(weak)
        rows = [r for r in loc.study(7, series) if "Foraminal" in r["condition"]]
        assert len(rows) == 10 and {r["series_id"] for r in rows} == {expected}
        assert len([k for key, k in loc.calls if key == "sagittal_t1"][0]) == 10  # both series in one call


class _FaintT1(_Planted):
    """_Planted, with each foramen level's channel firing hardest on the disc below its own (a sixth disc
    below L5/S1 at heat row 49) and faintly on its own: Sagittal T1 read on its own is a level low."""

    def heatmaps(self, part, slices, stacks=None, faults=None):
        heat = super().heatmaps(part, slices, stacks, faults)
        if part.series_type == "sagittal_t1":
            rows = DISC_ROWS + [49]
            heat[:, part.any_channel, 49, 20] = 0.9
            for c in range(5):
                heat[:, c, rows[c], 20], heat[:, c, rows[c + 1], 20] = 0.3, 0.9
        return heat


def test_the_foramina_are_read_at_the_levels_of_the_canal(monkeypatch):
    from src.core.faults import FaultLog
    from src.localizer import infer
    from src.localizer.decode import Search

    def ys(rows, condition):
        return [r["y"] for r in rows if r["condition"] == condition]

    canal = ys(_FaintT1().study(7, _study()), "Spinal Canal Stenosis")
    alone = _FaintT1()
    alone.search = Search(level_sd_mm=0.0)  # each series on its own: the foramina a disc low
    assert ys(alone.study(7, _study()), "Left Neural Foraminal Narrowing")[:4] == pytest.approx(canal[1:], abs=0.5)
    rows = _FaintT1().study(7, _study())
    assert len(rows) == 25
    for side in ("Left", "Right"):
        assert ys(rows, f"{side} Neural Foraminal Narrowing") == pytest.approx(canal, abs=0.5)
    # Without a canal there is nothing to agree with: Sagittal T1 is read on its own.
    no_t2 = _FaintT1().study(7, _study(with_t2=False))
    assert ys(no_t2, "Left Neural Foraminal Narrowing")[:4] == pytest.approx(canal[1:], abs=0.5)

    # A failure while agreeing costs the study nothing but the agreement, and is named once.
    def broken(*args, anchors=None, **kwargs):
        if anchors is not None:
            raise ValueError("no luck")
        return read_searched(*args, **kwargs)

    read_searched = infer.read_searched
    monkeypatch.setattr(infer, "read_searched", broken)
    faults = FaultLog()
    rows = _FaintT1().study(7, _study(), faults)
    assert len(rows) == 25 and ys(rows, "Left Neural Foraminal Narrowing")[:4] == pytest.approx(canal[1:], abs=0.5)
    assert [f.name for f in faults.faults] == ["study 7"] and "no luck" in faults.faults[0].reason


class _Truth(Localizer):
    """A perfect localizer on a generated study: each level's heat peaks where its true 3D point projects,
    fading with the distance from the slice (beyond that of the series' nearest slice, where the labels sit,
    for a point just past the end of a stack), plus a decoy disc above L1/L2 (T12/L1) that the L1/L2 channel
    half believes in."""

    SIZE = 128

    def __init__(self, points: dict[tuple[str, str], np.ndarray]):
        import torch

        super().__init__({p.series_type: [(None, {"loc": {"size_px": self.SIZE}})] for p in PLAN}, torch.device("cpu"))
        self.points = points

    def heatmaps(self, part, slices, stacks=None, faults=None):
        from src.localizer.frame import series_frame
        from src.localizer.plan import STRIDE

        cells = self.SIZE // STRIDE
        yy, xx = np.mgrid[0:cells, 0:cells]
        heat = np.zeros((len(slices), part.channels, cells, cells), np.float32)
        for i, (series, k) in enumerate(slices):
            frame = series_frame(series, k, self.SIZE)
            for (condition, level), p in self.points.items():
                if condition not in part.conditions:
                    continue
                decoys = [(p, 0.9, part.channel(level))]
                if level == "L1/L2" and part.searched:  # the disc above: one level spacing further up
                    decoys.append((2 * p - self.points[(condition, "L2/L3")], 0.5, part.channel(level)))
                for q, amp, c in decoys:
                    x, y, dist = series.patient_to_pixel(k, q)
                    dist = abs(float(dist)) - min(series.nearest_slice(q)[1], 8.0)
                    u, v = frame.to_input(x, y)
                    cu, cv = (u + 0.5) / STRIDE - 0.5, (v + 0.5) / STRIDE - 0.5
                    g = amp * np.exp(-float(dist) ** 2 / (2 * 2.0**2)) * np.exp(-((xx - cu) ** 2 + (yy - cv) ** 2) / 2.0)
                    heat[i, c] = np.maximum(heat[i, c], g)
        if part.searched:
            heat[:, part.any_channel] = heat[:, : part.any_channel].max(1)
        return heat


@pytest.mark.filterwarnings("ignore")
def test_generated_variety_studies_decode_to_their_true_points(variety_dir):
    """Rectangular and anisotropic images, instance numbers against position, axial blocks across several
    series, repeated sagittal series, extra discs: with heatmaps at the truth, every point is found within
    1 mm in plane, axial points on the slice nearest the truth (+-1), and levels never shift."""
    import pandas as pd

    from src.data.dicom import read_series

    latent = pd.read_csv(variety_dir / "train_latent.csv")
    table = load_series_descriptions(variety_dir / "train_series_descriptions.csv")
    checked = 0
    for study_id, g in table.groupby("study_id"):
        series = {}
        for r in g.itertuples():
            s = read_series(variety_dir / "train_images" / str(study_id) / str(r.series_id))
            series.setdefault(r.series_description, []).append((int(r.series_id), s))
        truth = latent[latent["study_id"] == study_id]
        points = {(r.condition, r.level): np.array([r.px, r.py, r.pz]) for r in truth.itertuples()}
        rows = _Truth(points).study(int(study_id), series)
        by_id = {sid: (desc, s) for desc, group in series.items() for sid, s in group}
        for r in rows:
            desc, s = by_id[r["series_id"]]
            point = points[(r["condition"], r["level"])]
            nearest = min(t.nearest_slice(point)[1] for _, t in series[desc])
            if not np.isfinite(nearest):
                continue  # outside every image of its series type: not labelled either
            k = s.index_of_instance(r["instance_number"])
            x, y, dist = s.patient_to_pixel(k, point)
            row_mm, col_mm = s.spacings[k]
            assert np.hypot((r["x"] - x) * col_mm, (r["y"] - y) * row_mm) < 1.0, (study_id, r)
            # On the slice nearest the truth (+-1) of any series of its type (a point past the end of a stack
            # is on the end slice).
            assert abs(float(dist)) <= nearest + 1.5 * max(s.slice_gap, 1.0), (study_id, r)
            checked += 1
    assert checked >= 10 * 20


@pytest.mark.filterwarnings("ignore")
def test_batches_of_studies_localize_as_one_study_at_a_time(synth_dir, tmp_path):
    import pandas as pd
    import torch

    from src.core.faults import FaultLog
    from src.data.cache import prepare
    from src.localizer.infer import localize

    cache = tmp_path / "cache"
    prepare(synth_dir, cache, "test", workers=1)
    table = load_series_descriptions(synth_dir / "test_series_descriptions.csv")
    runs = make_fake_runs(tmp_path / "runs", classifiers=False, folds=(0, 1))
    loc = Localizer.from_runs(runs, device=torch.device("cpu"))
    calls = []
    for key, models in loc.models.items():
        for model, _ in models:
            model.register_forward_pre_hook(lambda m, args, key=key: calls.append((key, len(args[0]))))
    batched = localize(table, cache, "test", loc, studies_per_batch=8, workers=1)
    # Every fold of each series type sees all 4 studies in one call; the axial levels of all of them too.
    assert sorted(key for key, _ in calls) == sorted([p.series_type for p in PLAN] * 2)
    axial = batched[batched["condition"].str.contains("Subarticular")]
    assert dict(calls)["axial"] == len(axial.drop_duplicates(["study_id", "level"]))
    single_calls = len(calls)
    calls.clear()
    single = localize(table, cache, "test", loc, studies_per_batch=1)
    assert len(calls) > single_calls and batched["study_id"].nunique() == table["study_id"].nunique()
    keys = ["study_id", "condition", "level"]
    a, b = batched.sort_values(keys).reset_index(drop=True), single.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys + ["series_id", "instance_number"]], b[keys + ["series_id", "instance_number"]])
    assert np.abs(a[["x", "y", "confidence"]].to_numpy() - b[["x", "y", "confidence"]].to_numpy()).max() < 1e-4

    # A fold that cannot predict is dropped for good and named; the other fold carries its series type.
    def broken(x):
        raise RuntimeError("bad weights")

    loc.models["axial"][1][0].forward = broken
    faults = FaultLog()
    again = localize(table, cache, "test", loc, faults, studies_per_batch=8)
    assert [f.name for f in faults.of("fold")] == ["localizer_axial fold 1"] and loc.failed["axial"] == {1}
    assert [j for j, _, _ in loc.live(PARTS["axial"])] == [0] and len(loc.models["axial"]) == 2  # the loaded folds stay
    assert len(again) == len(batched)
    loc.models["axial"][0][0].forward = broken  # no fold left: the axial conditions only go without coordinates
    faults = FaultLog()
    last = localize(table, cache, "test", loc, faults, studies_per_batch=8)
    assert [f.name for f in faults.of("localizer")] == ["localizer_axial"]
    assert len(last) == len(batched) - len(axial) and not last["condition"].str.contains("Subarticular").any()


def test_spinal_canal_is_recentred_between_the_foramina():
    """The canal read on the slice at x = 8 mm, foramina (another series) at x = 12 and -28 mm, so their
    middle is at -8: the canal moves to the slice midway, x = 0. A level without both foramina keeps its
    slice, and the foramina rows are untouched."""
    t2, t1 = _sagittal(n=5), _sagittal(n=5, gap=10.0)  # T2 slices at x = 8, 4, 0, -4, -8; T1 at 20 ... -20
    canal = {"study_id": 1, "series_id": 2, "condition": "Spinal Canal Stenosis", "x": 30.0, "y": 40.0}
    rows = [dict(canal, level="L1/L2", instance_number=1), dict(canal, level="L2/L3", instance_number=1)]
    foramina = [{"study_id": 1, "series_id": 3, "condition": c, "level": "L1/L2", "instance_number": k, "x": 30.0,
                 "y": 40.0} for c, k in (("Left Neural Foraminal Narrowing", 2), ("Right Neural Foraminal Narrowing", 5))]
    t1.positions[1, 0] = 12.0  # the left foramen's slice at x = 12, the right one's at -20
    t1.positions[4, 0] = -28.0
    out = recentre_midline(rows + foramina, {2: t2, 3: t1})
    assert [r["instance_number"] for r in out] == [3, 1, 2, 5]
    assert out[2:] == foramina and out[0]["x"] == 30.0 and out[0]["level"] == "L1/L2"
