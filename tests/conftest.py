"""Shared fixtures: a tiny synthetic dataset and the real competition CSVs beside the repo."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures import random_runs  # noqa: E402

import src.registry  # noqa: E402,F401 - every model registered, as the scripts have them
from src.core.constants import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2  # noqa: E402
from src.core.paths import DEFAULT_PATTERNS  # noqa: E402
from src.synth import VARIETIES, SynthConfig, generate  # noqa: E402

SHARED = DEFAULT_PATTERNS.parent  # ../shared/rsna2024


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "train.csv").is_file():
        pytest.skip(f"real competition CSVs not found at {SHARED}")
    return SHARED


def tiny_config(out: Path, **overrides) -> SynthConfig:
    """A few small studies: 64 px images, 2 mm voxels, short stacks; seconds to generate."""
    base = dict(
        out=out, studies=8, test_studies=4, seed=3, image_size=64, voxel_mm=2.0, sag_slices=(7, 9),
        axial_per_level=(2, 3), workers=1,
        # Exercise the rare paths: compressed series, rescaled pixels, dropped optional tags, 2-3 axials.
        p_compressed=0.3, p_rescaled=0.3, p_missing_optional_tags=0.3, p_axial_series=(0.4, 0.4, 0.2),
        p_missing_series={SAGITTAL_T1: 0.1, SAGITTAL_T2: 0.0, AXIAL_T2: 0.0},
    )
    base.update(overrides)
    return SynthConfig(**base)


@pytest.fixture(scope="session")
def tiny() -> "callable":
    """The tiny_config factory, for tests that generate a dataset of their own."""
    return tiny_config


# The real variety with every case turned up, so that a few tiny studies show each one.
FORCED_VARIETY = replace(
    VARIETIES["real"], p_non_square=0.6, p_anisotropic=0.5, p_stir=0.5, p_study_missing_coordinates=0.6,
    sag_slices=(11, 13), axial_per_level=(2, 3), sag_size=(1.0, 1.5), axial_size=(1.0,),
    sagittal_counts={SAGITTAL_T1: (0.2, 0.5, 0.3), SAGITTAL_T2: (0.0, 1.0, 0.0)}, axial_series=(0.3, 0.4, 0.2, 0.1),
)


@pytest.fixture(scope="session")
def variety_dir(tmp_path_factory) -> Path:
    """Tiny studies generated with the acquisition variety of real MRI (FORCED_VARIETY)."""
    out = tmp_path_factory.mktemp("variety")
    generate(tiny_config(out, studies=10, test_studies=2, variety=FORCED_VARIETY))
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(tiny_config(out))
    return out


def make_fake_runs(root: Path, classifiers: bool = True, experiments: tuple[str, ...] = (),
                   folds: tuple[int, ...] = (0,)) -> Path:
    """Untrained (random) localizer and classifier runs with real configs: the pipeline's plumbing only.

    experiments: extra attn_resnext runs under these names (as `train.py --name NAME` writes them)."""
    return random_runs(root, "tiny", folds, classifiers, experiments=experiments,
                       overrides={"localizer": {"loc": {"size_px": 32}}, "classifier": {"crop": {"size_px": 16}}})
