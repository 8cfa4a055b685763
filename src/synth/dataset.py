"""The whole dataset: every study in parallel, then the competition's tables and the answers beside them."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.atomic import write_csv, write_text
from ..core.constants import LABEL_COLUMNS, SEVERITIES, TARGETS
from ..core.metric import solution_frame
from ..core.parallel import progress_map
from ..data.tables import load_train, submission_row_ids
from .config import SynthConfig
from .labels import fallback_patterns, metric_optimal
from .study import make_study

LATENT_COLUMNS = [
    "row_id", "study_id", "condition", "level", "severity", "label", *(f"p_{t}" for t in TARGETS), "px", "py", "pz"
]


def _study_ids(n: int, rng: np.random.Generator) -> list[int]:
    ids: set[int] = set()
    while len(ids) < n:
        ids.update(int(v) for v in rng.integers(10**6, 4_300_000_000, n - len(ids)))
    return sorted(ids)


def generate(cfg: SynthConfig) -> dict[str, Path]:
    """Write the whole synthetic dataset under cfg.out; returns the paths of the tables written."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    n_total = cfg.studies + cfg.test_studies
    if cfg.patterns is not None and Path(cfg.patterns).is_file():
        real = load_train(cfg.patterns)[list(LABEL_COLUMNS)].to_numpy()
        pick = rng.choice(len(real), size=n_total, replace=n_total > len(real))
        patterns = real[pick]
    else:
        patterns = fallback_patterns(n_total, rng)
    ids = _study_ids(n_total, rng)
    rng.shuffle(ids)
    splits = ["train"] * cfg.studies + ["test"] * cfg.test_studies
    seeds = np.random.SeedSequence(cfg.seed).spawn(n_total)
    jobs = [(sid, patterns[i], splits[i], seeds[i], cfg) for i, sid in enumerate(ids)]
    results = list(progress_map(make_study, jobs, cfg.workers, "synth studies"))
    paths: dict[str, Path] = {}
    for split in ("train", "test"):
        part = sorted((r for r in results if r["split"] == split), key=lambda r: r["labels"]["study_id"])
        paths.update(write_split(out, split, part))
    write_text(pd.Series(asdict(cfg)).to_json(default_handler=str, indent=1), out / "synth_config.json")
    return paths


def write_split(out: Path, split: str, part: list[dict]) -> dict[str, Path]:
    """The tables of one split: series descriptions, coordinates, the hidden truth (latent, oracle), and
    train.csv, or the test split's sample submission and solution."""
    paths = {f"{split}_{name}": out / f"{split}_{file}" for name, file in
             (("series", "series_descriptions.csv"), ("oracle", "oracle.csv"), ("latent", "latent.csv"),
              ("coordinates", "label_coordinates.csv"))}
    series = pd.DataFrame([s for r in part for s in r["series"]], columns=["study_id", "series_id", "series_description"])
    write_csv(series, paths[f"{split}_series"])
    latent = pd.DataFrame([row for r in part for row in r["latent"]], columns=LATENT_COLUMNS)
    study_ids = [r["labels"]["study_id"] for r in part]
    oracle = pd.DataFrame({"row_id": latent["row_id"]})
    oracle[list(TARGETS)] = metric_optimal(latent[[f"p_{t}" for t in TARGETS]].to_numpy())
    write_csv(oracle.set_index("row_id").loc[submission_row_ids(study_ids)].reset_index(), paths[f"{split}_oracle"])
    write_csv(latent, paths[f"{split}_latent"])
    # The test split's coordinates are a hidden answer like test_solution.csv (for scoring localization).
    coords = pd.DataFrame([c for r in part for c in r["coords"]],
                          columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"])
    write_csv(coords, paths[f"{split}_coordinates"])
    labels = pd.DataFrame([r["labels"] for r in part], columns=["study_id", *LABEL_COLUMNS])
    if split == "train":
        paths["train"] = out / "train.csv"
        write_csv(labels, paths["train"])
        return paths
    (out / "test_images").mkdir(exist_ok=True)
    sample = pd.DataFrame({"row_id": submission_row_ids(study_ids), **{t: 1.0 / 3.0 for t in TARGETS}})
    paths["sample_submission"] = out / "sample_submission.csv"
    write_csv(sample, paths["sample_submission"])
    numeric = labels.copy()
    for c in LABEL_COLUMNS:
        numeric[c] = numeric[c].map({s: i for i, s in enumerate(SEVERITIES)}).astype(float)
    paths["test_solution"] = out / "test_solution.csv"
    write_csv(solution_frame(numeric), paths["test_solution"])
    return paths
