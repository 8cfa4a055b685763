import numpy as np
import pytest

from src.data.dicom import Series
from src.localizer.data import gaussian_heatmaps
from src.localizer.decode import (
    HeatSource,
    Search,
    assign_levels,
    decode_searched,
    decode_slice,
    neighbour_weight,
    plane_alternative,
    read_searched,
    refine_peak,
    side_of_slices,
    slice_alternative,
    structure_centre,
)
from src.localizer.frame import frame_of
from src.localizer.plan import PARTS


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
    # Without a midline, the lateral structures seen on both sides find it: here foramina at x = 8 and -4 mm
    # put it at 2 mm, off the series centre, so the slice at x = 0 is on the right.
    sides = side_of_slices(_sagittal(n=5), midline=None, weights=np.array([0.9, 0.05, 0.05, 0.8, 0.05]))
    assert sides.tolist() == [1, 1, -1, -1, -1]


def test_assign_levels_fixes_a_channel_firing_on_the_next_disc():
    # Three discs at 0, 36 and 72 mm; level 1's channel is strongest on disc 2 but must take disc 1.
    scores = np.array([[0.9, 0.1, 0.1], [0.1, 0.4, 0.8], [0.1, 0.1, 0.9]])
    picks, sure = assign_levels(scores, np.array([0.0, 36.0, 72.0]), 15.0)
    assert picks == [0, 1, 2] and sure == 1.0  # the only assignment of three levels to three discs
    # Peaks given out of order come back ordered; too few separate peaks give None.
    assert assign_levels(scores[:, [2, 0, 1]], np.array([72.0, 0.0, 36.0]), 15.0)[0] == [1, 2, 0]
    assert assign_levels(scores, np.array([0.0, 5.0, 72.0]), 15.0) == (None, 0.0)
    # Discs too far apart for neighbours (a missed disc in between) are not an assignment either.
    assert assign_levels(scores, np.array([0.0, 36.0, 150.0]), 15.0, max_gap=70.0) == (None, 0.0)


def test_assign_levels_never_skips_a_disc():
    # Four discs 34 mm apart; the top level's channel fires hardest on the disc above its own. Within
    # 15-70 mm it could take that disc and skip its own (a 68 mm gap); twice the other gaps is not a spine.
    inferior = np.array([-34.0, 0.0, 34.0, 68.0])
    scores = np.array([[0.9, 0.3, 0.05, 0.05], [0.05, 0.1, 0.8, 0.1], [0.05, 0.05, 0.1, 0.9]])
    assert assign_levels(scores, inferior, 15.0, 70.0)[0] == [0, 2, 3]
    assert assign_levels(scores, inferior, 15.0, 70.0, max_ratio=1.6)[0] == [1, 2, 3]


def test_assign_levels_is_unsure_when_a_reading_a_level_off_is_as_likely():
    # Four discs (T12/L1 above L1/L2) for three levels: clear channels pick the lower three, surely;
    # channels that cannot tell the readings apart give about half the likelihood to each.
    inferior = np.array([-36.0, 0.0, 36.0, 72.0])
    clear = np.array([[0.05, 0.9, 0.1, 0.05], [0.05, 0.1, 0.9, 0.1], [0.05, 0.05, 0.1, 0.9]])
    picks, sure = assign_levels(clear, inferior, 15.0)
    assert picks == [1, 2, 3] and sure > 0.9
    vague = np.array([[0.5, 0.5, 0.5, 0.5]] * 3)
    _, sure = assign_levels(vague, inferior, 15.0)
    assert sure < 0.5


def with_every_level(heat: np.ndarray) -> np.ndarray:
    """Level heatmaps (K, 5, h, w) plus the every-level channel a searched localizer also outputs."""
    return np.concatenate([heat, heat.max(1, keepdims=True)], 1)


def test_decode_searched_orders_levels_on_planted_heatmaps():
    s = _sagittal(n=3)
    heat = np.zeros((3, 5, 50, 50), np.float32)
    rows = [5, 14, 23, 32, 41]  # heatmap rows of the five discs, head to feet
    for c, r in enumerate(rows):
        heat[1, c, r, 20] = 0.9
    heat[1, 2, rows[3], 20] = 0.95  # level 3 fires harder on the disc of level 4
    out = decode_searched(PARTS["sagittal_t2"], HeatSource(1, 2, s, 100), with_every_level(heat), np.arange(3))
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
    # Back to a 256 x 128 (w x h) image with 0.5 x 1 mm pixels (a square field of view): a plain resize.
    px, py = frame_of((128, 256), (1.0, 0.5), 64).heat_to_image((ry, rx))
    assert px == pytest.approx((20.0 + 0.5) * 4 - 0.5, abs=0.6) and py == pytest.approx((11.0 + 0.5) * 2 - 0.5, abs=0.3)


def test_decode_searched_splits_foramina_by_side_of_the_midline():
    """Sagittal T1: a lateral condition only looks at the slices on its side (patient x), whatever the heat."""
    s = _sagittal(n=5)  # slices at patient x = 8, 4, 0, -4, -8 mm
    heat = np.zeros((5, 5, 50, 50), np.float32)
    rows = [5, 14, 23, 32, 41]
    for k, strength in ((0, 0.9), (4, 0.8)):  # a left slice (x = 8) and a right one (x = -8)
        for c, r in enumerate(rows):
            heat[k, c, r, 20] = strength
    out = decode_searched(PARTS["sagittal_t1"], HeatSource(1, 2, s, 100), with_every_level(heat), np.arange(5),
                          midline=np.zeros(3))
    by_condition = {c: {r["instance_number"] for r in out if r["condition"] == c} for c in PARTS["sagittal_t1"].conditions}
    assert by_condition == {"Left Neural Foraminal Narrowing": {1}, "Right Neural Foraminal Narrowing": {5}}
    assert len(out) == 10


def test_decode_slice_names_sides_by_patient_x():
    """Axial: of two peaks, the one at larger patient x is the left subarticular zone, in any image orientation."""
    heat = np.zeros((40, 40), np.float32)
    heat[20, 8], heat[20, 30] = 0.9, 0.7
    normal = _axial([0.0])  # rows +y, columns +x: column 30 is the patient's left
    flipped = Series(None, np.zeros((1, 80, 80), np.float32), np.array([1]), np.array([[40.0, -40.0, 0.0]]),
                     np.array([[-1.0, 0, 0, 0, 1.0, 0]]), np.ones((1, 2)))  # columns run to the patient's right
    for series, left_column in ((normal, 30), (flipped, 8)):
        out = decode_slice(PARTS["axial"], HeatSource(1, 2, series, 80), 0, heat, "L4/L5")
        left = next(r for r in out if r["condition"] == "Left Subarticular Stenosis")
        assert {r["condition"] for r in out} == set(PARTS["axial"].conditions)
        assert left["x"] == pytest.approx((left_column + 0.5) * 2 - 0.5, abs=0.6)
        assert all(r["level"] == "L4/L5" and r["instance_number"] == 1 for r in out)


def test_decode_searched_takes_discs_from_the_every_level_channel():
    """Six discs in view (one above L1/L2). The every-level channel marks all six; the L1/L2 channel fires
    hardest on the disc above its own and the L2/L3 channel only weakly and between two discs (a net that
    knows the lower levels better than the upper ones). The levels still land on five consecutive discs,
    counted up from the one L5/S1 names, and L2/L3 on its disc, not between two."""
    s = _sagittal(n=3)
    discs = [4, 12, 20, 28, 36, 44]  # heatmap rows, head to feet; 8 cells = 16 mm apart
    heat = np.zeros((3, 6, 50, 50), np.float32)
    for r in discs:
        heat[1, 5, r, 20] = 0.8
    heat[1, 0, 4, 20], heat[1, 0, 12, 20] = 0.7, 0.5  # L1/L2: the topmost disc looks most like it
    heat[1, 1, 12:29, 20] = 0.2
    heat[1, 1, 16, 20] = 0.3  # L2/L3: weak, and highest between two discs
    for c, r in ((2, 28), (3, 36), (4, 44)):
        heat[1, c, r, 20] = 0.9
    out = decode_searched(PARTS["sagittal_t2"], HeatSource(1, 2, s, 100), heat, np.arange(3))
    frame = frame_of(s.shape, s.spacings[1], 100)
    expected = [frame.heat_to_image((r, 20))[1] for r in discs[1:]]
    assert [r["level"] for r in out] == ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]
    assert [r["y"] for r in out] == pytest.approx(expected, abs=1.0)


def test_structure_centre_reads_a_wide_structure_at_its_middle():
    """A canal seen on five neighbouring slices that peaks, by a hair, on the first of them is read on the
    middle one; a separate bump further on does not pull it, and slices given in any order are sorted by depth."""
    profile = np.array([0.05, 0.80, 0.78, 0.77, 0.76, 0.75, 0.05, 0.70])
    depth = np.arange(8) * 4.0
    j, centre = structure_centre(profile, depth)
    assert int(np.argmax(profile)) == 1 and j == 3
    assert centre == pytest.approx((0.40 * 4 + 0.38 * 8 + 0.37 * 12 + 0.36 * 16 + 0.35 * 20) / 1.86)  # excess over half
    shuffled = np.array([5, 0, 7, 2, 6, 1, 4, 3])
    assert shuffled[structure_centre(profile[shuffled], depth[shuffled])[0]] == 3
    assert structure_centre(np.array([0.1, 0.9, 0.1]), np.array([0.0, 4.0, 8.0])) == (1, 4.0)  # a narrow peak stays put
    assert structure_centre(np.zeros(3), np.array([0.0, 4.0, 8.0]))[0] == 0  # no heat: the arg-max (the first)


def test_decode_searched_reads_the_spinal_canal_on_its_middle_slice():
    s = _sagittal(n=7)
    heat = np.zeros((7, 5, 50, 50), np.float32)
    for c, r in enumerate([5, 14, 23, 32, 41]):
        for k, v in ((1, 0.9), (2, 0.88), (3, 0.87), (4, 0.86), (5, 0.85)):
            heat[k, c, r, 20] = v
    out = decode_searched(PARTS["sagittal_t2"], HeatSource(1, 2, s, 100), with_every_level(heat), np.arange(7))
    assert [r["instance_number"] for r in out] == [4] * 5  # slice index 3, not 1 where the heat peaks


def test_decode_slice_takes_each_side_from_its_own_side_of_the_canal():
    """Axial: the left recess and a lookalike further left outshine a faint right recess. The two strongest
    peaks would both be on the left; with the canal point (the midline) each side takes its own peak, and a
    peak beyond reach_mm of the canal is ignored."""
    series = _axial([0.0])  # 80 x 80 px of 1 mm: heat cell (r, c) is at patient (2c + 0.5 - 40, 2r + 0.5 - 40)
    heat = np.zeros((40, 40), np.float32)
    heat[20, 25], heat[20, 30], heat[20, 14] = 0.9, 0.8, 0.3  # left recess, lookalike 10 mm further left, right recess
    heat[20, 39] = 0.95  # a bright spot 28 mm left of the recess, 38 mm from the canal
    canal = series.pixel_to_patient(0, 39.5, 40.5)  # heat cell (20, 19.75)
    plain = {r["condition"]: r["x"] for r in decode_slice(PARTS["axial"], HeatSource(1, 2, series, 80), 0, heat, "L4/L5")}
    assert plain["Right Subarticular Stenosis"] > 40  # both named on the patient's left half
    out = {r["condition"]: r for r in decode_slice(PARTS["axial"], HeatSource(1, 2, series, 80), 0, heat, "L4/L5", midline=canal)}
    assert out["Left Subarticular Stenosis"]["x"] == pytest.approx(25 * 2 + 0.5, abs=0.6)
    assert out["Right Subarticular Stenosis"]["x"] == pytest.approx(14 * 2 + 0.5, abs=0.6)
    assert out["Right Subarticular Stenosis"]["confidence"] == pytest.approx(0.3)


def test_read_searched_with_anchors_takes_the_discs_another_series_found():
    """Sagittal T1: both foramina's channels fire hardest on the disc below their own (a reading a level
    low), and faintly where they should. Read alone, each level lands a disc too low; anchored at the canal's
    heights (Sagittal T2 of the same study) every level is back on its own disc, and the reading says where."""
    s = _sagittal(n=5)  # slices at patient x = 8, 4, 0, -4, -8 mm
    s = Series(None, s.volume, s.instance_numbers, s.positions, s.orientations, np.full((5, 2), 2.0))  # 2 mm pixels
    frame = frame_of(s.shape, s.spacings[0], 100)  # a heat cell is 4 mm
    discs = [2, 11, 20, 29, 38, 47]  # heatmap rows, head to feet, 36 mm apart: one disc below L5/S1's
    heat = np.zeros((5, 6, 50, 50), np.float32)
    for k in (0, 4):  # a left and a right slice
        for c in range(5):
            heat[k, c, discs[c + 1], 20] = 0.9  # the disc below: strong
            heat[k, c, discs[c], 20] = 0.3  # its own disc: faint
        heat[k, 5, discs, 20] = 0.8  # the every-level channel sees every disc
    part, src = PARTS["sagittal_t1"], HeatSource(1, 2, s, 100)

    def height(r):  # heat row -> mm, feet up
        return float(-s.pixel_to_patient(0, *frame.heat_to_image((r, 20)))[2])

    alone = read_searched(part, src, heat, np.arange(5), midline=np.zeros(3))
    left = alone["Left Neural Foraminal Narrowing"]
    assert list(left.heights.values()) == pytest.approx([height(r) for r in discs[1:]], abs=0.5)
    anchors = {level: height(r) + 3.0 for level, r in zip(part.levels, discs[:5])}  # the canal, 3 mm off
    agreed = read_searched(part, src, heat, np.arange(5), midline=np.zeros(3), anchors=anchors)
    for condition in part.conditions:
        reading = agreed[condition]
        assert list(reading.heights) == list(part.levels)
        assert list(reading.heights.values()) == pytest.approx([height(r) for r in discs[:5]], abs=0.5)
        assert [r["y"] for r in reading.rows] == pytest.approx([frame.heat_to_image((r, 20))[1] for r in discs[:5]], abs=1.0)
    # Anchors off (level_sd_mm 0): the series on its own.
    off = read_searched(part, src, heat, np.arange(5), midline=np.zeros(3), anchors=anchors, search=Search(level_sd_mm=0.0))
    assert off["Left Neural Foraminal Narrowing"].heights == left.heights


def test_a_point_between_two_slices_names_the_neighbour_with_its_chance():
    """A foramen seen about equally on two slices is read on the one its centre is nearer, and names the other
    with the chance (depth error sd 1 mm) that the centre lies nearer that one."""
    depth = np.array([0.0, 4.0, 8.0, 12.0])
    profile = np.array([0.1, 0.9, 0.85, 0.1])
    j, centre = structure_centre(profile, depth)
    assert j == 1 and centre == pytest.approx((0.45 * 4 + 0.4 * 8) / 0.85)
    k, w = slice_alternative(depth, j, centre, 1.0)
    assert k == 2 and w == pytest.approx(0.4527, abs=1e-3)  # Phi((1.882 - 2) / 1)
    assert neighbour_weight(2.0, 4.0, 1.0) == pytest.approx(0.5)  # half way: either slice
    assert neighbour_weight(-1.0, -4.0, 1.0) == pytest.approx(neighbour_weight(1.0, 4.0, 1.0))
    assert neighbour_weight(-1.0, 4.0, 1.0) < 0.002 and neighbour_weight(1.9, 4.0, 0.0) == 0.0  # the far side
    assert slice_alternative(depth, 1, 4.0, 0.5) is None  # on the slice, sd 0.5 mm: the neighbour under 1%
    assert slice_alternative(depth, 3, 13.0, 1.0) is None  # no slice beyond the last
    assert slice_alternative(depth, 1, centre, 0.0) is None  # sd 0: one slice per point


def test_an_axial_level_names_the_neighbouring_slice_on_its_side():
    s = _axial([0.0, 4.0, 8.0])
    k, w = plane_alternative(s, 1, np.array([0.0, 0.0, 2.1]), 1.0)
    assert k == 0 and w == pytest.approx(0.4602, abs=1e-3)  # 1.9 mm from slice 1, 2.1 from slice 0
    assert plane_alternative(s, 1, np.array([0.0, 0.0, 4.2]), 0.5) is None
    assert plane_alternative(s, 2, np.array([0.0, 0.0, 9.0]), 1.0) is None
    # The next slice of the series in another stack, tilted 30 degrees: not this stack's neighbour.
    c, sn = np.cos(np.radians(30)), np.sin(np.radians(30))
    tilted = Series(None, s.volume, s.instance_numbers, s.positions,
                    np.array([s.orientations[0], s.orientations[1], [1.0, 0, 0, 0, c, sn]]), s.spacings)
    assert plane_alternative(tilted, 1, np.array([0.0, 0.0, 5.9]), 1.0) is None
    assert plane_alternative(s, 1, np.array([0.0, 0.0, 5.9]), 1.0)[0] == 2
    # Nor a parallel slice whose image does not hold the point (a stack beside this one).
    beside = Series(None, s.volume, s.instance_numbers, s.positions + np.array([[0, 0, 0], [0, 0, 0], [200.0, 0, 0]]),
                    s.orientations, s.spacings)
    assert plane_alternative(beside, 1, np.array([0.0, 0.0, 5.9]), 1.0) is None


def test_lateral_rows_name_their_neighbouring_slice_and_the_canal_does_not():
    s = _sagittal(n=7)  # slices at patient x = 12, 8, 4, 0, -4, -8, -12 mm
    canal, heat = np.zeros((7, 5, 50, 50), np.float32), np.zeros((7, 5, 50, 50), np.float32)
    for c, r in enumerate([5, 14, 23, 32, 41]):
        canal[2:5, c, r, 20] = 0.9
        heat[0, c, r, 30], heat[1, c, r, 30] = 0.84, 0.9  # a left foramen between x = 12 and 8, nearer 8
    t2 = decode_searched(PARTS["sagittal_t2"], HeatSource(1, 2, s, 100), with_every_level(canal), np.arange(7))
    assert all(r["alt_instance_number"] is None and r["alt_weight"] == 0.0 for r in t2)
    t1 = decode_searched(PARTS["sagittal_t1"], HeatSource(1, 2, s, 100), with_every_level(heat), np.arange(7),
                         midline=np.zeros(3))
    left = [r for r in t1 if r["condition"] == "Left Neural Foraminal Narrowing"]
    assert [(r["instance_number"], r["alt_instance_number"]) for r in left] == [(2, 1)] * 5
    assert all(0.3 < r["alt_weight"] < 0.5 for r in left)
    no_sd = decode_searched(PARTS["sagittal_t1"], HeatSource(1, 2, s, 100), with_every_level(heat), np.arange(7),
                            midline=np.zeros(3), search=Search(slice_sd_mm=0.0))
    assert all(r["alt_instance_number"] is None for r in no_sd)


def test_a_foramen_keeps_its_peak_slice_and_leans_toward_its_centre():
    """A foramen that peaks by a hair on one slice of a run whose centre is nearer the next keeps the peak
    slice as its row's (the localizer's errors there jitter attn_resnext) and gives the next nearly all the
    weight."""
    s = _sagittal(n=7)  # left of the midline: slices at x = 12, 8, 4, 0 mm (depth -12, -8, -4, 0)
    heat = np.zeros((7, 5, 50, 50), np.float32)
    for c, r in enumerate([5, 14, 23, 32, 41]):
        heat[1, c, r, 30], heat[2, c, r, 30], heat[3, c, r, 30] = 0.9, 0.88, 0.85
    t1 = decode_searched(PARTS["sagittal_t1"], HeatSource(1, 2, s, 100), with_every_level(heat), np.arange(7),
                         midline=np.zeros(3))
    left = [r for r in t1 if r["condition"] == "Left Neural Foraminal Narrowing"]
    centre = (-8 * 0.45 - 4 * 0.43 + 0 * 0.40) / 1.28  # the run's heat over half its peak, weighted
    assert [(r["instance_number"], r["alt_instance_number"]) for r in left] == [(2, 3)] * 5
    assert left[0]["alt_weight"] == pytest.approx(neighbour_weight(centre + 8, 4.0, 1.0)) and left[0]["alt_weight"] > 0.95
