"""The classifier's task (training.task.Task): severity of level-wise crops, the loss and the validation numbers.

The localizer's task lives with the localizer (localizer/task.py); both prepare and read their tables with
`prepare_tables` and `read_tables`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..core.constants import TARGETS
from ..core.metric import fold_prior, labels_long, overlay, score_parts
from ..core.progress import log
from ..core.registry import build_model, register_task
from ..core.run_folders import OOF, localizer_run, run_dir
from ..data.folds import fold_solution
from ..data.inputs import check_tables, prepare_tables, read_tables
from ..data.tables import load_coordinates, load_series_descriptions, load_submission
from ..localizer.errors import point_errors
from ..localizer.plan import PLAN
from .augment import DeviceAugment, eval_transform, train_transform, use_device_path
from .crops import JITTER_COLUMNS, CropSpec, build_crops, jittered, other_views
from .datasets import CropDataset


def jitter_errors(cfg: dict, coords: pd.DataFrame, cache_dir: Path) -> pd.DataFrame | None:
    """The signed localization errors cfg['jitter'] samples from (None: normal offsets): an errors CSV, or
    'localizer': this fold's localizer runs' predictions on their held-out studies against the labels."""
    source = cfg["jitter"]["errors"]
    if not source:
        return None
    if source != "localizer":
        errors = pd.read_csv(source)
        missing = [c for c in ("condition", "dx_mm", "dy_mm", "dslice") if c not in errors]
        if missing:
            raise ValueError(f"{source}: jitter errors file lacks columns {missing} (evaluate_localization.py writes them)")
        return errors
    files = [run_dir(cfg["runs"], localizer_run(p.series_type), cfg["fold"]) / "oof.csv" for p in PLAN]
    found = [f for f in files if f.is_file()]
    if not found:
        raise FileNotFoundError(f"jitter.errors 'localizer': none of {[str(f) for f in files]} exists: train this "
                                f"fold's localizer first (train.py --fold {cfg['fold']} --model localizer)")
    predicted = pd.concat([load_coordinates(f) for f in found], ignore_index=True)
    truth = coords[coords["study_id"].isin(predicted["study_id"]) & coords["condition"].isin(predicted["condition"])]
    return point_errors(predicted, truth, cache_dir, "train")


def drop_contradicted(train_index: pd.DataFrame, label_filter: dict) -> pd.DataFrame:
    """The training rows whose label the out-of-fold predictions in label_filter['oof'] give at least
    label_filter['below'] (rows they do not cover stay); all rows without one. oof: a file, or a run folder
    whose folds' oof.csv are read together (each study's predictions come from the fold that held it out)."""
    if not label_filter.get("oof"):
        return train_index
    source = Path(label_filter["oof"])
    files = sorted(source.glob(f"fold*/{OOF}")) if source.is_dir() else [source]
    if not files:
        raise FileNotFoundError(f"label_filter.oof {source}: no fold*/{OOF} in this run folder")
    oof = pd.concat([load_submission(f) for f in files]).drop_duplicates("row_id").set_index("row_id")
    covered = train_index["row_id"].isin(oof.index).to_numpy()
    p_label = np.ones(len(train_index))
    rows = train_index.loc[covered]
    probs = oof.loc[rows["row_id"], list(TARGETS)].to_numpy(float)
    p_label[covered] = probs[np.arange(len(rows)), rows["label"].astype(int).to_numpy()]
    keep = p_label >= label_filter["below"]
    log(f"label_filter: {int((~keep).sum())} of {len(keep)} training labels dropped "
        f"(their class under {label_filter['below']} in {label_filter['oof']}; {int(covered.sum())} rows covered)")
    return train_index[keep].reset_index(drop=True)


@register_task("classifier")
class ClassifierTask:
    """Severity classification of level-wise crops cut at the labelled coordinates."""

    input_keys = ("image", "condition", "level")
    trains_other_views = True  # cfg['views']' crops are training items (StudyTask: not)
    shown = ("val_loss", "score", "acc")

    def __init__(self, cfg: dict, device: torch.device = torch.device("cpu")):
        self.cfg = cfg
        self.device = device
        self.spec = CropSpec(**cfg["crop"])
        self._jittered: pd.DataFrame | None = None
        self._views: pd.DataFrame | None = None

    def check(self) -> None:
        check_tables(self.cfg)

    def build_model(self) -> torch.nn.Module:
        return build_model(self.cfg)

    def _crops(self, coords: pd.DataFrame, cache_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
        """The crops of the coordinates (and of their jittered variants when cfg['jitter'] asks for them, and of
        their other views, `view` > 0, when cfg['views'] names some)."""
        jitter, labelled = self.cfg["jitter"], coords
        if jitter["copies"]:
            if self._jittered is None:  # drawn once: prepare and load cut and read the same crops
                self._jittered = jittered(coords, jitter["copies"], jitter_errors(self.cfg, coords, cache_dir),
                                          jitter["mm"], jitter["slices"],
                                          self.cfg["seed"] if jitter["seed"] is None else jitter["seed"])
            coords = self._jittered
        if any(self.cfg["views"].values()):
            if self._views is None:
                descriptions = load_series_descriptions(Path(self.cfg["data_dir"]) / "train_series_descriptions.csv")
                self._views = other_views(labelled, descriptions, cache_dir, "train", self.cfg["views"])
            views = self._views.assign(**{c: 0 for c in ("variant", *JITTER_COLUMNS) if c in coords})
            coords = pd.concat([coords.assign(view=0), views], ignore_index=True)
        return build_crops(coords, cache_dir, "train", self.spec, cache_dir / "crops", self.cfg["workers"])

    def prepare(self) -> None:
        prepare_tables(self.cfg)
        _, cache_dir, _, _, coords = read_tables(self.cfg)
        self._crops(coords, cache_dir)

    def load(self) -> None:
        cfg = self.cfg
        _, cache_dir, self.train, self.folds, coords = read_tables(cfg)
        self.crops, index = self._crops(coords, cache_dir)
        views = None
        if "view" in index:  # other views of a point train beside its own crop; validation reads the labelled one
            views = index[index["view"] > 0].drop(columns=["view", "view_type", "variant", *JITTER_COLUMNS],
                                                   errors="ignore")
            index = index[index["view"] == 0].drop(columns=["view", "view_type"], errors="ignore")
        variants = None
        if "variant" in index:  # one row per point (its labelled crop), its variants' crop numbers apart
            variants = index.pivot(index="row_id", columns="variant", values="crop")
            index = index[index["variant"] == 0].drop(columns=["variant", *JITTER_COLUMNS])
        index = index.merge(labels_long(self.train)[["row_id", "label"]], on="row_id", how="left")
        index["fold"] = index["study_id"].map(dict(zip(self.folds["study_id"], self.folds["fold"])))
        self.train_index = index[(index["fold"] != cfg["fold"]) & index["label"].notna()].reset_index(drop=True)
        self.train_index = drop_contradicted(self.train_index, cfg["label_filter"])
        labelled = len(self.train_index)
        if views is not None and self.trains_other_views:
            views = views.merge(self.train_index[["row_id", "label", "fold"]], on="row_id")
            self.train_index = pd.concat([self.train_index, views], ignore_index=True)
        self.val_index = index[index["fold"] == cfg["fold"]].reset_index(drop=True)
        if self.train_index.empty or self.val_index.empty:
            raise ValueError(f"fold {cfg['fold']}: {len(self.train_index)} training and {len(self.val_index)} validation crops")
        self.train_variants = None
        if variants is not None:  # a variant not cut (its slice outside the series) serves the labelled crop
            wide = variants.loc[self.train_index["row_id"].iloc[:labelled]]
            own = self.train_index["crop"].to_numpy(np.int64)[labelled:, None]  # another view has no variants
            self.train_variants = np.concatenate([wide.fillna({v: wide[0] for v in wide.columns}).to_numpy(np.int64),
                                                  np.repeat(own, wide.shape[1], 1)])
        self.val_solution = fold_solution(self.train, self.folds, cfg["fold"])
        self.prior = fold_prior(self.train, self.folds, self.val_solution)
        self.class_weights = torch.tensor(cfg["class_weights"], dtype=torch.float32)
        use_device = use_device_path(cfg["aug"], self.device)
        self.device_augment = DeviceAugment(cfg["aug"], self.spec.size_px) if use_device else None

    @property
    def loader_work(self) -> bool:
        """Augmented in the loader (aug.where cpu); on the device path the loader only gathers crops."""
        return self.device_augment is None

    def to_device(self, batch: dict, device: torch.device, train: bool) -> dict[str, torch.Tensor]:
        """The model's inputs on the device; training crops are augmented there on the device path."""
        inputs = {k: batch[k].to(device, non_blocking=True) for k in self.input_keys}
        if train and self.device_augment is not None:
            inputs["image"], inputs["condition"] = self.device_augment(inputs["image"], inputs["condition"])
        return inputs

    def references(self) -> dict[str, float]:
        """Scores of the constant prior and, on synthetic data, of the oracle on this fold's studies."""
        refs = {"prior": score_parts(self.val_solution, self.prior)["score"]}
        oracle = Path(self.cfg["data_dir"]) / "train_oracle.csv"
        if oracle.is_file():
            refs["oracle"] = score_parts(self.val_solution, load_submission(oracle))["score"]
        return refs

    def train_dataset(self) -> CropDataset:
        """Augmented crops; raw ones (augmented in to_device) on the device path."""
        cpu = None if self.device_augment else train_transform(self.cfg["aug"], self.spec.size_px)
        return CropDataset(self.crops, self.train_index, cpu, self.train_variants)

    def val_dataset(self) -> CropDataset:
        return CropDataset(self.crops, self.val_index, eval_transform(self.spec.size_px))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Cross-entropy with the metric's class weights 1/2/4 (as `loss_weighting` says: item weights, or the
        logits shifted by -log of them) and label_smoothing; unknown labels (-1) are ignored. Either way the
        softmax of the logits is fitted to the metric's weighted optimum."""
        label = batch["label"].to(logits.device, non_blocking=True)
        if self.class_weights.device != logits.device:  # moved once, not every step
            self.class_weights = self.class_weights.to(logits.device)
        if self.cfg["loss_weighting"] == "logit_adjusted":
            return F.cross_entropy(logits.float() - self.class_weights.log(), label, ignore_index=-1,
                                   label_smoothing=self.cfg["label_smoothing"])
        return F.cross_entropy(logits.float(), label, weight=self.class_weights, ignore_index=-1,
                               label_smoothing=self.cfg["label_smoothing"])

    def evaluate(self, logits: torch.Tensor, rows: torch.Tensor) -> tuple[dict, pd.DataFrame]:
        """Validation loss, competition score and accuracy of one pass; returns them and the oof frame.

        Validation rows without a crop (no coordinate or series) get the training prior, so oof.csv has
        every row of the fold and scores against the fold's full solution.
        """
        index = self.val_index.iloc[rows.numpy()]
        probs = torch.softmax(logits.float(), 1).numpy()
        labelled = index["label"].notna().to_numpy()
        label = torch.tensor(index["label"].fillna(-1).to_numpy(), dtype=torch.long)
        val_loss = float(F.cross_entropy(logits.float()[labelled], label[labelled], weight=self.class_weights.cpu()))
        pred = pd.DataFrame(probs, columns=list(TARGETS))
        pred.insert(0, "row_id", index["row_id"].to_numpy())
        oof = overlay(self.prior, pred)
        parts = score_parts(self.val_solution, oof)
        acc = float((probs[labelled].argmax(1) == label[labelled].numpy()).mean())
        return {"val_loss": val_loss, "score": parts["score"], "acc": acc,
                **{f"score_{k}": v for k, v in parts.items() if k != "score"}}, oof
