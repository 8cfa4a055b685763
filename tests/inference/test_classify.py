import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_fake_runs

from src.classifier.crops import centre_unit
from src.classifier.models import CropClassifier
from src.core.constants import CONDITIONS, FLIPPED_CONDITION, row_id
from src.core.faults import FaultLog
from src.data.cache import prepare
from src.data.tables import load_coordinates
from src.inference.classify import Member, batch_probabilities, load_members, predict_members, with_alternatives
from src.inference.context import InferenceContext


class _Recorder(CropClassifier):
    """Logits from the image's left half, its condition and level; records what each call saw."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, image, condition, level):
        self.calls.append((image.clone(), condition.clone()))
        left = image[..., : image.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([10 * left, condition.float() / 3, level.float() / 5], 1)


class _Broken(CropClassifier):
    def forward(self, image, condition, level):
        raise RuntimeError("bad weights")


def _ctx(cache, **kw) -> InferenceContext:
    """Inference on the train split's cache, on the CPU, in this process unless workers says otherwise."""
    return InferenceContext(cache, cache, cache, "train", device=torch.device("cpu"), **{"workers": 1, **kw})


def _member(model, name="m", fold=0, size_px=4, hflip=0.5):
    return Member(name, fold, model, {"crop": {"n_slices": 2, "size_px": size_px, "context": 1.5},
                                      "aug": {"hflip": hflip}})


def test_both_tta_views_go_in_one_call_per_member_and_are_averaged():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 2, 6, 6), dtype=np.uint8)
    condition = np.array([CONDITIONS.index("Left Subarticular Stenosis"), 0,
                          CONDITIONS.index("Right Neural Foraminal Narrowing")])
    level = np.array([0, 2, 4])
    a, b = _Recorder(), _Recorder()
    out = batch_probabilities([_member(a), _member(b), _member(_Broken())], crops, condition, level,
                              torch.device("cpu"), hflip_tta=True)
    assert len(a.calls) == len(b.calls) == 1
    image, cond = a.calls[0]
    assert image.shape == (6, 2, 4, 4)  # both views of 3 crops, centre 4 px of the 6 stored
    x = centre_unit(torch.from_numpy(crops), 4)
    assert torch.equal(image[:3], x) and torch.equal(image[3:], x.flip(-1))
    assert cond.tolist() == condition.tolist() + [FLIPPED_CONDITION[c] for c in condition]
    assert CONDITIONS[cond[3]] == "Right Subarticular Stenosis"  # a flipped left axial crop is a right one
    lev = torch.from_numpy(level)
    expected = (torch.softmax(_Recorder()(x, torch.from_numpy(condition), lev), 1)
                + torch.softmax(_Recorder()(x.flip(-1), torch.tensor([FLIPPED_CONDITION[c] for c in condition]), lev), 1)) / 2
    assert np.allclose(out[0], expected.numpy(), atol=1e-6) and np.allclose(out[1], out[0])
    assert isinstance(out[2], RuntimeError)  # a failing member costs only itself
    assert centre_unit(torch.full((1, 1, 7, 7), 255, dtype=torch.uint8), 4).shape == (1, 1, 4, 4)


def test_a_member_trained_without_flips_sees_only_the_crops_as_they_are():
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (3, 2, 6, 6), dtype=np.uint8)
    condition, level = np.array([0, 3, 4]), np.array([1, 2, 3])
    flips, plain = _Recorder(), _Recorder()
    out = batch_probabilities([_member(flips), _member(plain, hflip=0)], crops, condition, level,
                              torch.device("cpu"), hflip_tta=True)
    assert flips.calls[0][0].shape[0] == 6 and plain.calls[0][0].shape[0] == 3
    x = centre_unit(torch.from_numpy(crops), 4)
    assert torch.equal(plain.calls[0][0], x)
    expected = torch.softmax(_Recorder()(x, torch.from_numpy(condition), torch.from_numpy(level)), 1)
    assert np.allclose(out[1], expected.numpy(), atol=1e-6) and not np.allclose(out[0], out[1])
    only = _Recorder()  # with no member that flips, no flipped view is made at all
    batch_probabilities([_member(only, hflip=0)], crops, condition, level, torch.device("cpu"), hflip_tta=True)
    assert only.calls[0][0].shape[0] == 3


def test_a_per_crop_member_predicts_only_the_rows_needed_and_a_study_member_sees_them_all():
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (4, 2, 6, 6), dtype=np.uint8)
    condition, level = np.array([0, 3, 4, 1]), np.array([1, 2, 3, 4])
    needed = np.array([True, False, True, False])
    crop, study = _Recorder(), _Recorder()
    whole = Member("s", 0, study, {**_member(study).cfg, "task": "study"})
    out = batch_probabilities([_member(crop), whole], crops, condition, level, torch.device("cpu"),
                              hflip_tta=True, needed=needed)
    x = centre_unit(torch.from_numpy(crops), 4)
    assert torch.equal(crop.calls[0][0], torch.cat([x[[0, 2]], x[[0, 2]].flip(-1)]))  # both views of rows 0 and 2
    assert study.calls[0][0].shape[0] == 8  # both views of every row
    full = batch_probabilities([_member(_Recorder())], crops, condition, level, torch.device("cpu"), hflip_tta=True)[0]
    assert np.allclose(out[0][needed], full[needed], atol=1e-6) and np.allclose(out[0][~needed], 1 / 3)
    assert np.allclose(out[1], full, atol=1e-6)
    none = _Recorder()
    assert np.allclose(batch_probabilities([_member(none)], crops, condition, level, torch.device("cpu"),
                                           needed=np.zeros(4, bool))[0], 1 / 3) and not none.calls


def _two_fold_members(synth_dir, tmp_path, names):
    """The cache and labelled coordinates of the tiny train split, and folds 0 and 1 of random-weight runs."""
    cache = tmp_path / "cache"
    prepare(synth_dir, cache, "train", workers=1)
    coords = load_coordinates(synth_dir / "train_label_coordinates.csv")
    runs = make_fake_runs(tmp_path / "runs", folds=(0, 1))
    return cache, coords, load_members(runs, names, torch.device("cpu"), FaultLog())


@pytest.mark.filterwarnings("ignore")
def test_batches_of_studies_give_what_one_study_at_a_time_gives(synth_dir, tmp_path):
    cache, coords, members = _two_fold_members(synth_dir, tmp_path, ["attn_resnext", "cnn_lstm"])
    assert [(m.name, m.fold) for m in members] == [("attn_resnext", 0), ("attn_resnext", 1), ("cnn_lstm", 0), ("cnn_lstm", 1)]
    calls = []
    for m in members:
        m.model.register_forward_pre_hook(lambda mod, args, name=m.name: calls.append(name))
    batched = predict_members(coords, members, _ctx(cache, studies_per_batch=8))
    studies = coords["study_id"].nunique()
    assert len(calls) == len(members) * 1  # 8 studies in one batch: one call per fold
    calls.clear()
    single = predict_members(coords, members, _ctx(cache, studies_per_batch=1, workers=2))
    assert len(calls) == len(members) * studies
    for name in ("attn_resnext", "cnn_lstm"):
        a, b = batched[name].set_index("row_id"), single[name].set_index("row_id")
        assert len(a) == len(coords.drop_duplicates(["study_id", "condition", "level"]))
        assert np.abs(a - b.loc[a.index]).to_numpy().max() < 1e-5
    # A run's output is the mean of its folds (which differ).
    one = predict_members(coords, [members[1]], _ctx(cache))["attn_resnext"].set_index("row_id")
    zero = predict_members(coords, [members[0]], _ctx(cache))["attn_resnext"].set_index("row_id")
    assert np.abs(one - zero.loc[one.index]).to_numpy().max() > 1e-3
    assert np.allclose((one + zero.loc[one.index]) / 2, batched["attn_resnext"].set_index("row_id").loc[one.index], atol=1e-6)


@pytest.mark.filterwarnings("ignore")
def test_a_fold_that_cannot_predict_is_dropped_and_named(synth_dir, tmp_path):
    cache, coords, members = _two_fold_members(synth_dir, tmp_path, ["attn_resnext"])
    members[1].model = _Broken()
    faults = FaultLog()
    out = predict_members(coords, members, _ctx(cache, faults=faults))
    alone = predict_members(coords, members[:1], _ctx(cache))
    assert pd.testing.assert_frame_equal(out["attn_resnext"], alone["attn_resnext"]) is None
    assert [f.name for f in faults.of("fold")] == ["attn_resnext fold 1"]
    members[0].model = _Broken()
    faults = FaultLog()
    assert predict_members(coords, members, _ctx(cache, faults=faults)) == {}
    assert [f.name for f in faults.of("member")] == ["attn_resnext"]


@pytest.mark.filterwarnings("ignore")
def test_a_point_between_two_slices_gets_the_weighted_mean_of_both_slices(synth_dir, tmp_path):
    """A row naming its neighbouring slice (localizer.decode.slice_alternative) is predicted on both slices and
    the two averaged by the weight; the other rows are as without it."""
    cache, coords, _ = _two_fold_members(synth_dir, tmp_path, [])
    members = [_member(_Recorder(), name="attn_resnext")]  # its logits follow the image, so the two slices differ
    coords = coords.drop_duplicates(["study_id", "condition", "level"]).reset_index(drop=True)
    i = int(np.flatnonzero(coords["condition"].str.contains("Subarticular").to_numpy())[0])
    k = int(coords.loc[i, "instance_number"])
    other = k - 1 if k > 1 else k + 1
    moved = coords.copy()
    moved.loc[i, "instance_number"] = other
    plain = predict_members(coords, members, _ctx(cache))["attn_resnext"].set_index("row_id")
    there = predict_members(moved, members, _ctx(cache))["attn_resnext"].set_index("row_id")
    named = coords.assign(alt_instance_number=np.nan, alt_weight=0.0)
    named.loc[i, ["alt_instance_number", "alt_weight"]] = [other, 0.25]
    both = predict_members(named, members, _ctx(cache))["attn_resnext"].set_index("row_id")
    row = row_id(coords.loc[i, "study_id"], coords.loc[i, "condition"], coords.loc[i, "level"])
    assert np.abs(plain.loc[row] - there.loc[row]).max() > 1e-3  # the two slices predict differently
    assert np.allclose(both.loc[row], 0.75 * plain.loc[row] + 0.25 * there.loc[row], atol=1e-6)
    rest = both.index.drop(row)
    assert np.allclose(both.loc[rest], plain.loc[rest], atol=1e-6) and len(both) == len(plain)


def test_with_alternatives_repeats_each_study_that_names_a_slice():
    coords = pd.DataFrame({"study_id": [1, 1, 2], "series_id": 5, "instance_number": [3, 4, 6],
                           "condition": "Left Subarticular Stenosis", "level": ["L1/L2", "L2/L3", "L1/L2"],
                           "x": 1.0, "y": 1.0, "alt_instance_number": [np.nan, 5.0, 7.0], "alt_weight": [0.0, 0.3, 0.0]})
    out = with_alternatives(coords)
    assert out["variant"].tolist() == [0, 0, 0, 1, 1]  # study 1 again, whole; study 2's zero weight names nothing
    assert out["instance_number"].tolist() == [3, 4, 6, 3, 5]
    assert np.allclose(out["weight"], [1.0, 0.7, 1.0, 0.0, 0.3])
    plain = with_alternatives(coords.drop(columns=["alt_instance_number", "alt_weight"]))
    assert plain["variant"].tolist() == [0, 0, 0] and plain["weight"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.filterwarnings("ignore")
def test_a_member_reads_its_test_views_as_the_mean_with_the_points_own_crop(synth_dir, tmp_path):
    from src.classifier.crops import other_views
    from src.data.tables import load_series_descriptions

    cache, coords, members = _two_fold_members(synth_dir, tmp_path, ["attn_resnext", "cnn_lstm"])
    attn, cnn = members[0], members[2]
    ctx = InferenceContext(synth_dir, cache, cache, "train", device=torch.device("cpu"), workers=1)
    plain = predict_members(coords, [attn, cnn], ctx)
    wanted = {"subarticular": ["sagittal_t2"]}
    views = other_views(coords, load_series_descriptions(synth_dir / "train_series_descriptions.csv"), cache, "train", wanted)
    assert len(views) and set(views["condition"]) <= {"Left Subarticular Stenosis", "Right Subarticular Stenosis"}
    alone = predict_members(views.drop(columns="view"), [attn], ctx)["attn_resnext"].set_index("row_id")
    attn.cfg = {**attn.cfg, "test_views": wanted}
    both = predict_members(coords, [attn, cnn], ctx)
    a, b = both["attn_resnext"].set_index("row_id"), plain["attn_resnext"].set_index("row_id")
    assert a.index.equals(b.index)
    viewed = alone.index
    assert np.allclose(a.loc[viewed], (b.loc[viewed] + alone) / 2, atol=1e-6)  # the two crops' mean
    rest = a.index.difference(viewed)
    assert len(rest) and np.allclose(a.loc[rest], b.loc[rest], atol=1e-6)  # every other row as before
    assert np.allclose(both["cnn_lstm"].set_index("row_id"), plain["cnn_lstm"].set_index("row_id"), atol=1e-6)
    broken = InferenceContext(tmp_path / "nowhere", cache, cache, "train", device=torch.device("cpu"), workers=1)
    fallen = predict_members(coords, [attn], broken)["attn_resnext"].set_index("row_id")  # no descriptions file
    assert np.allclose(fallen, b.loc[fallen.index], atol=1e-6)
    assert [f.name for f in broken.faults.of("models")] == ["test views"]  # named once; the rest as without views
    ctx.test_views = False  # infer.py --no-test-views: each point on its own series
    own = predict_members(coords, [attn], ctx)["attn_resnext"].set_index("row_id")
    assert np.allclose(own, b.loc[own.index], atol=1e-6)
    cnn.cfg = {**cnn.cfg, "task": "study", "test_views": wanted}
    assert cnn.test_views == {}  # a study-level member reads a study's own crops

