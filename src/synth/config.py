"""What the generator draws from: the benchmark's settings (SynthConfig) and the acquisition varieties."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.constants import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2
from ..core.paths import DEFAULT_PATTERNS, SYNTH_DIR

# Measured on the real train CSVs (../shared/rsna2024, 1,975 studies; tests/test_synth.py checks them):
# axial T2 series per study 1/2/3/4 in 1640/306/28/1 studies; Sagittal T1 missing in 2 and doubled in 7,
# Sagittal T2/STIR missing in 1; 29 of 48,803 labelled rows (in 3 studies) without a coordinate.
REAL_AXIAL_SERIES = (1640, 306, 28, 1)
REAL_SAGITTAL_COUNTS = {SAGITTAL_T1: (2, 1966, 7), SAGITTAL_T2: (1, 1974, 0)}  # studies with 0, 1, 2 series
REAL_STUDIES_WITHOUT_SOME_COORDINATES = 3
REAL_STUDIES = 1975


def _rates(counts) -> tuple[float, ...]:
    total = float(sum(counts))
    return tuple(c / total for c in counts)


@dataclass(frozen=True)
class Variety:
    """How much studies and series differ in anatomy coverage, geometry, size and intensity."""

    name: str = "default"
    extended_anatomy: bool = False  # render T11, T12, their discs and the sacrum beyond L1-S1
    sag_size: tuple[float, ...] = (1.0, 1.25)  # matrix size as a factor of image_size, one drawn per series
    axial_size: tuple[float, ...] = (0.75, 1.0)
    sag_fov: tuple[float, float] = (190.0, 240.0)  # mm
    axial_fov: tuple[float, float] = (150.0, 200.0)
    sag_centre_z: tuple[float, float] = (-20.0, -4.0)  # field centre along the spine, mm from L3/L4 (+ head)
    sag_centre_keeps_levels: bool = False  # narrow the centre's range so that L1/L2 to L5/S1 stay in the field
    sag_slices: tuple[int, int] | None = None  # None: SynthConfig.sag_slices
    sag_gap: tuple[float, float] = (3.3, 4.2)
    axial_per_level: tuple[int, int] | None = None  # None: SynthConfig.axial_per_level
    p_non_square: float = 0.0  # a rectangular matrix and field of view
    p_anisotropic: float = 0.0  # row and column pixel spacing differ
    p_sag_reversed: float = 0.5  # instance 1 on the patient's left instead of the right
    p_axial_reversed: float = 0.0  # instance 1 at the feet instead of the head
    contrast: float = 0.0  # per-study log-normal spread of each tissue's intensity
    gamma: tuple[float, float] = (1.0, 1.0)  # per-series intensity curve
    bias: tuple[float, float] = (0.12, 0.12)  # bias field strength
    noise: tuple[float, float] | None = None  # None: SynthConfig.noise
    p_stir: float = 0.0  # the Sagittal T2/STIR series is a STIR (fat suppressed)
    sagittal_counts: dict | None = None  # description -> p(0, 1, 2 series); None: SynthConfig.p_missing_series
    axial_series: tuple[float, ...] | None = None  # p(1, 2, ... axial series); None: SynthConfig.p_axial_series
    p_study_missing_coordinates: float = 0.0  # a study whose coordinates lack some levels
    block_offset_mm: float = 1.0  # axial blocks are centred this close to their disc


VARIETIES: dict[str, Variety] = {
    "default": Variety(),
    "real": Variety(
        name="real", extended_anatomy=True, sag_size=(0.75, 1.0, 1.25, 1.5, 2.0), axial_size=(0.75, 1.0, 1.25, 1.5),
        sag_fov=(200.0, 340.0), axial_fov=(140.0, 230.0), sag_centre_z=(-45.0, 25.0), sag_centre_keeps_levels=True,
        sag_slices=(14, 24),
        sag_gap=(3.0, 5.0), axial_per_level=(2, 6), p_non_square=0.35, p_anisotropic=0.15, p_axial_reversed=0.5,
        contrast=0.15, gamma=(0.7, 1.4), bias=(0.05, 0.35), noise=(0.01, 0.07), p_stir=0.3,
        sagittal_counts={k: _rates(v) for k, v in REAL_SAGITTAL_COUNTS.items()},
        axial_series=_rates(REAL_AXIAL_SERIES),
        p_study_missing_coordinates=REAL_STUDIES_WITHOUT_SOME_COORDINATES / REAL_STUDIES, block_offset_mm=3.0,
    ),
}


@dataclass
class SynthConfig:
    """Everything the generator draws from; the defaults are the embedded benchmark."""

    out: Path = SYNTH_DIR
    studies: int = 200
    test_studies: int = 40
    seed: int = 0
    image_size: int = 256  # base rows/columns of an image; series vary around it
    voxel_mm: float = 1.0
    sag_slices: tuple[int, int] = (15, 19)
    axial_per_level: tuple[int, int] = (3, 5)
    thresholds: tuple[float, float] = (0.4, 0.7)  # latent severity where moderate / severe become likely
    reader_noise: float = 0.05  # logistic scale of p(label | s): readers' disagreement near a threshold
    patterns: Path | None = DEFAULT_PATTERNS
    p_missing_series: dict[str, float] = field(
        default_factory=lambda: {SAGITTAL_T1: 0.01, SAGITTAL_T2: 0.005, AXIAL_T2: 0.005}
    )
    p_axial_series: tuple[float, float, float] = (0.83, 0.155, 0.015)  # 1, 2 or 3 axial series (real rates)
    p_missing_coordinate: float = 0.003
    p_compressed: float = 0.06
    p_missing_optional_tags: float = 0.1
    p_rescaled: float = 0.1
    noise: tuple[float, float] = (0.015, 0.035)
    workers: int = 2
    variety: str | Variety = "default"  # a key of VARIETIES, or a Variety

    @property
    def var(self) -> Variety:
        if isinstance(self.variety, Variety):
            return self.variety
        if self.variety not in VARIETIES:
            raise ValueError(f"variety must be one of {sorted(VARIETIES)}, not {self.variety!r}")
        return VARIETIES[self.variety]


# ----------------------------------------------------------------------------------------------------
# Labels

