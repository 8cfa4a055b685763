from pathlib import Path

import numpy as np
import pytest
import torch

from src.classifier.task import ClassifierTask
from src.core.config import resolve
from src.localizer.data import gaussian_heatmaps
from src.localizer.plan import PLAN
from src.localizer.task import LocalizerTask, level_loss


def ready(task):
    """A task as the engine uses it: prepared (caches written), then loaded."""
    task.prepare()
    task.load()
    return task


@pytest.fixture(scope="module")
def overrides(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return {"data_dir": str(synth_dir), "cache_dir": str(root / "cache"), "folds": str(root / "folds.csv"),
            "workers": 0, "crop": {"size_px": 16, "n_slices": 3}, "loc": {"size_px": 32}}


@pytest.mark.filterwarnings("ignore")
def test_classifier_task_splits_by_study_and_scores_every_validation_row(overrides):
    task = ready(ClassifierTask(resolve("attn_resnext", "tiny", None, {**overrides, "aug": {"where": "cpu"}})))
    assert task.loader_work  # augmented in the loader: the item is the augmented centre crop
    train_studies, val_studies = set(task.train_index["study_id"]), set(task.val_index["study_id"])
    assert train_studies and val_studies and not train_studies & val_studies
    assert task.train_index["label"].notna().all()  # unlabelled crops never train
    item = task.train_dataset()[0]
    assert item["image"].shape == (3, 16, 16) and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
    # Perfect logits on the labelled crops beat the prior; the oof frame has every row of the fold's solution.
    labels = task.val_index["label"].fillna(0).astype(int).to_numpy()
    perfect = torch.nn.functional.one_hot(torch.tensor(labels), 3).float() * 20
    rows = torch.arange(len(task.val_index))
    metrics, oof = task.evaluate(perfect, rows)
    flat, _ = task.evaluate(torch.zeros(len(rows), 3), rows)
    assert set(task.val_solution["row_id"]) <= set(oof["row_id"])
    assert metrics["acc"] == 1.0 and metrics["score"] < flat["score"] < task.references()["prior"] + 1.0
    loss = task.loss(perfect, {"label": torch.tensor(np.where(np.arange(len(labels)) % 2, labels, -1))})
    assert float(loss) < 1e-6  # unknown labels (-1) are ignored


@pytest.mark.parametrize("task_class", [ClassifierTask, LocalizerTask])
def test_building_a_task_decodes_and_writes_nothing(synth_dir, tmp_path, task_class):
    overrides = {"data_dir": str(synth_dir), "cache_dir": str(tmp_path / "cache"), "folds": str(tmp_path / "folds.csv"),
                 "runs": str(tmp_path / "runs"), "series_type": PLAN[0].series_type}
    model = "localizer" if task_class is LocalizerTask else "attn_resnext"
    task_class(resolve(model, "tiny", None, overrides))
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError):  # load reads what prepare writes
        task_class(resolve(model, "tiny", None, overrides)).load()


@pytest.mark.filterwarnings("ignore")
def test_jittered_training_crops_are_variants_of_the_training_rows_only(overrides, tmp_path):
    jitter = {"copies": 2, "errors": None, "mm": 2.0, "slices": 0.5}
    task = ready(ClassifierTask(resolve("attn_resnext", "tiny", None, {**overrides, "jitter": jitter})))
    plain = ready(ClassifierTask(resolve("attn_resnext", "tiny", None, overrides)))
    assert task.train_variants.shape == (len(task.train_index), 3) and plain.train_variants is None
    assert (task.train_variants[:, 0] == task.train_index["crop"]).all()
    assert task.train_index.drop(columns="crop").equals(plain.train_index.drop(columns="crop"))
    assert len(task.val_index) == len(plain.val_index) and len(task.crops) > 2.5 * len(plain.crops)
    assert (task.train_variants[:, 1:] != task.train_variants[:, :1]).mean() > 0.9
    missing = {**jitter, "errors": "localizer"}
    with pytest.raises(FileNotFoundError, match="oof.csv"):
        ready(ClassifierTask(resolve("attn_resnext", "tiny", None, {**overrides, "jitter": missing, "runs": str(tmp_path)})))


@pytest.mark.filterwarnings("ignore")
def test_a_jitter_seed_makes_two_training_seeds_share_one_crop_store(overrides):
    jitter = {"copies": 1, "errors": None, "mm": 2.0, "slices": 0.5}

    def store(seed: int, draw: int | None) -> str:
        cfg = resolve("attn_resnext", "tiny", None, {**overrides, "seed": seed, "jitter": {**jitter, "seed": draw}})
        return ready(ClassifierTask(cfg)).crops.filename

    own = store(42, None)
    assert store(7, None) != own  # each run draws by its own seed
    assert store(7, 42) == store(42, 42) == own  # the draw's seed set: the same offsets, one store


def test_jitter_errors_come_from_this_folds_localizer_predictions(overrides, tmp_path):
    from src.classifier.task import jitter_errors
    from src.core.atomic import write_csv
    from src.core.run_folders import localizer_run, run_dir
    from src.data.cache import prepare
    from src.data.tables import load_coordinates

    cfg = resolve("attn_resnext", "tiny", None, {**overrides, "runs": str(tmp_path), "fold": 1,
                                                  "jitter": {"copies": 1, "errors": "localizer"}})
    coords = load_coordinates(Path(overrides["data_dir"]) / "train_label_coordinates.csv")
    part = PLAN[0]
    predicted = coords[coords["condition"].isin(part.conditions)].head(6).assign(x=lambda d: d["x"] + 2.0)
    out = run_dir(tmp_path, localizer_run(part.series_type), 1)
    out.mkdir(parents=True)
    write_csv(predicted, out / "oof.csv")
    prepare(Path(overrides["data_dir"]), Path(overrides["cache_dir"]), "train", workers=1)
    errors = jitter_errors(cfg, coords, Path(overrides["cache_dir"]))
    found = errors.dropna(subset=["dx_mm"])  # the studies' other labelled points are misses
    assert len(found) == 6 and (found["dx_mm"] > 0).all() and (found["dslice"] == 0).all()
    assert found["dy_mm"].abs().max() < 1e-6 and set(errors["condition"]) <= set(part.conditions)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("part", PLAN, ids=lambda p: p.series_type)
def test_localizer_task_recovers_labelled_points_from_their_own_targets(overrides, part):
    cfg = resolve("localizer", "tiny", None, dict(overrides, series_type=part.series_type, loc={"size_px": 64}))
    task = ready(LocalizerTask(cfg))
    index = task.store.index
    assert not set(index["study_id"].iloc[task.train_rows]) & set(index["study_id"].iloc[task.val_rows])
    val = task.val_dataset()
    item = val[0]
    assert item["image"].shape == (3, 64, 64) and item["target"].shape == (part.channels, 32, 32)
    # Logits that reproduce the target heatmaps decode back to the labelled points.
    targets = torch.stack([val[i]["target"] for i in range(len(val))])
    logits = torch.logit(targets.clamp(1e-4, 1 - 1e-4))
    metrics, pred = task.evaluate(logits, torch.arange(len(val)))
    assert set(pred["condition"]) <= set(part.conditions)
    # Sagittal T1 has no canal points to split the sides by: the foramina on both sides find the midline.
    # (Axial validation reads each labelled slice for both sides, so a level whose left and right points sit
    # on different slices scores a miss on each; at test time one slice serves both.)
    assert metrics["within_5mm"] >= (0.95 if part.searched else 0.8) and metrics["median_mm"] < 1.5, metrics


def test_level_loss_asks_each_labelled_disc_for_its_own_level():
    """Same heat on every level channel (a net that found the discs but not which is which) costs ln(5) at
    the labelled points; the right channel high costs almost nothing; the level above costs most."""
    target = torch.from_numpy(gaussian_heatmaps(np.array([[3, 20.0, 30.0, 1.0]]), 5, 64, 2.0))[None]  # L4/L5
    cells = target[0].max(0).values > 0.3
    hedged = torch.zeros(1, 5, 32, 32)
    assert float(level_loss(hedged, target)) == pytest.approx(np.log(5), abs=1e-5)
    right, wrong = hedged.clone(), hedged.clone()
    right[0, 3][cells], wrong[0, 2][cells] = 10.0, 10.0
    assert float(level_loss(right, target)) < 0.01 < 9.0 < float(level_loss(wrong, target))
    # Slices without a labelled point add nothing (and no host sync decides that).
    assert float(level_loss(hedged, torch.zeros(1, 5, 32, 32))) == 0.0


def test_labels_the_out_of_fold_predictions_contradict_are_left_out_of_training(overrides, tmp_path):
    import pandas as pd

    from src.classifier.task import drop_contradicted
    from src.core.atomic import write_csv
    from src.core.constants import TARGETS

    task = ready(ClassifierTask(resolve("attn_resnext", "tiny", None, overrides)))
    train = task.train_index
    # Out-of-fold predictions sure of the label on every row but the first three, which they contradict.
    probs = np.full((len(train), 3), 0.01)
    probs[np.arange(len(train)), train["label"].astype(int)] = 0.98
    probs[:3] = np.roll(probs[:3], 1, axis=1)
    oof = pd.DataFrame(probs, columns=list(TARGETS)).assign(row_id=train["row_id"].to_numpy())
    write_csv(oof[["row_id", *TARGETS]].iloc[:-5], tmp_path / "fold1" / "oof.csv")  # the last 5 rows not covered
    kept = drop_contradicted(train, {"oof": str(tmp_path), "below": 0.05})
    assert len(kept) == len(train) - 3 and not set(train["row_id"][:3]) & set(kept["row_id"])
    assert drop_contradicted(train, {"oof": None, "below": 0.05}) is train
    filtered = ready(ClassifierTask(resolve("attn_resnext", "tiny", None, {
        **overrides, "label_filter": {"oof": str(tmp_path / "fold1" / "oof.csv"), "below": 0.05}})))
    assert len(filtered.train_index) == len(train) - 3 and len(filtered.val_index) == len(task.val_index)


@pytest.mark.parametrize("weighting", ["weights", "logit_adjusted"])
def test_both_loss_weightings_fit_the_metrics_weighted_optimum(weighting):
    """Free logits fitted to grades drawn from p: the softmax reaches w * p / sum(w * p) whether the class weights
    weight the items or shift the logits; a logit-adjusted batch counts each item the same."""
    task = ClassifierTask.__new__(ClassifierTask)  # the loss needs its config and class weights only
    task.cfg = {"loss_weighting": weighting, "label_smoothing": 0.0}
    task.class_weights = torch.tensor([1.0, 2.0, 4.0])
    p = torch.tensor([0.6, 0.3, 0.1])
    label = torch.multinomial(p, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    z = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        task.loss(z.expand(len(label), 3), {"label": label}).backward()
        opt.step()
    observed = torch.bincount(label, minlength=3).float() / len(label)
    optimum = task.class_weights * observed / (task.class_weights * observed).sum()
    assert torch.allclose(torch.softmax(z.detach(), 1)[0], optimum, atol=0.005)
    # One item of each grade at zero logits: weighted items average log 3; shifted logits -log(w / sum(w)) per item.
    at_zero = float(task.loss(torch.zeros(3, 3), {"label": torch.tensor([0, 1, 2])}))
    shifted = float(-torch.log_softmax(-task.class_weights.log(), 0).mean())
    assert at_zero == pytest.approx(np.log(3) if weighting == "weights" else shifted, abs=1e-6)


@pytest.mark.filterwarnings("ignore")
def test_other_views_are_more_training_items_of_the_same_training_rows(overrides):
    from src.classifier.study import StudyTask

    views = {"foraminal": ["sagittal_t2"]}
    plain = ready(ClassifierTask(resolve("attn_resnext", "tiny", None, overrides)))
    task = ready(ClassifierTask(resolve("attn_resnext", "tiny", None, {**overrides, "views": views})))
    n = len(plain.train_index)
    extra = task.train_index.iloc[n:]
    assert task.train_index.iloc[:n].drop(columns="crop").equals(plain.train_index.drop(columns="crop"))
    assert len(extra) > 0 and extra["condition"].str.contains("Foraminal").all()
    assert extra["row_id"].is_unique and set(extra["row_id"]) <= set(plain.train_index["row_id"])
    labels = dict(zip(plain.train_index["row_id"], plain.train_index["label"]))
    assert (extra["label"].to_numpy() == extra["row_id"].map(labels).to_numpy()).all()
    assert not set(extra["crop"]) & set(task.train_index["crop"].iloc[:n])  # crops of their own, of the other series
    assert task.val_index.drop(columns="crop").equals(plain.val_index.drop(columns="crop"))  # validation: its own crop
    jitter = {"copies": 1, "errors": None, "mm": 2.0, "slices": 0.5}
    both = ready(ClassifierTask(resolve("attn_resnext", "tiny", None, {**overrides, "views": views, "jitter": jitter})))
    assert len(both.train_index) == len(task.train_index) and both.train_variants.shape == (len(both.train_index), 2)
    own = both.train_variants[n:]
    assert (own[:, 0] == own[:, 1]).all() and (own[:, 0] == both.train_index["crop"].iloc[n:]).all()
    study = ready(StudyTask(resolve("study", "tiny", None, {**overrides, "views": views})))
    assert len(study.train_index) == n and study.train_variants is None  # a study's positions hold its own crops
    assert study.crops.filename == task.crops.filename  # one store for both
