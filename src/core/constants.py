"""Competition constants: conditions, levels, label columns, series types and the row_id format.

Everything that names a piece of the RSNA 2024 competition lives here, so no other module spells it out.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

CONDITIONS: tuple[str, ...] = (
    "Spinal Canal Stenosis",
    "Left Neural Foraminal Narrowing",
    "Right Neural Foraminal Narrowing",
    "Left Subarticular Stenosis",
    "Right Subarticular Stenosis",
)
LEVELS: tuple[str, ...] = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")

SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
TARGETS: tuple[str, ...] = ("normal_mild", "moderate", "severe")  # submission columns, same order
SEVERITY_TO_INDEX: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
SAMPLE_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)  # metric weight by true class

SAGITTAL_T1 = "Sagittal T1"
SAGITTAL_T2 = "Sagittal T2/STIR"
AXIAL_T2 = "Axial T2"
SERIES_DESCRIPTIONS: tuple[str, ...] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)
# The series types' names in configs and run folders (config `series_type`, localizer_sagittal_t2, ...).
SERIES_TYPES: dict[str, str] = {SAGITTAL_T2: "sagittal_t2", SAGITTAL_T1: "sagittal_t1", AXIAL_T2: "axial"}

# The series type each condition is annotated on in train_label_coordinates.csv.
CONDITION_SERIES: dict[str, str] = {
    "Spinal Canal Stenosis": SAGITTAL_T2,
    "Left Neural Foraminal Narrowing": SAGITTAL_T1,
    "Right Neural Foraminal Narrowing": SAGITTAL_T1,
    "Left Subarticular Stenosis": AXIAL_T2,
    "Right Subarticular Stenosis": AXIAL_T2,
}

# The order in which test-time localization uses the series types: the spinal canal on Sagittal T2/STIR gives
# each level's 3D point; Sagittal T1 then splits its slices into the patient's left and right by that point
# (and stands in for it without a T2); an axial slice is picked per level by its 3D distance to that point.
LOCALIZER_ORDER: tuple[str, ...] = (SAGITTAL_T2, SAGITTAL_T1, AXIAL_T2)
# Series types whose slice is chosen by 3D geometry rather than searched: one heatmap channel serves every
# level there, while a searched (sagittal) type has one channel per level.
GEOMETRY_SLICED: frozenset[str] = frozenset({AXIAL_T2})

# Columns of train_label_coordinates.csv, and of predicted coordinates: they add the localizer's confidence and,
# where a point's depth lies between two slices, the neighbouring slice and the weight stage 2 gives its crop
# (localizer.decode.slice_alternative; empty and 0 where there is none).
COORDINATE_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
SLICE_ALTERNATIVE_COLUMNS: tuple[str, ...] = ("alt_instance_number", "alt_weight")
PREDICTED_COORDINATE_COLUMNS: tuple[str, ...] = (*COORDINATE_COLUMNS, "confidence", *SLICE_ALTERNATIVE_COLUMNS)

# Class frequencies (normal/mild, moderate, severe) per group in the real train.csv: the fallback prior.
REAL_CLASS_FREQUENCIES: dict[str, tuple[float, float, float]] = {
    "spinal": (0.878, 0.075, 0.047),
    "foraminal": (0.780, 0.181, 0.039),
    "subarticular": (0.714, 0.190, 0.096),
}

# Metric groups (the competition scores each group separately, then an any-severe-spinal term).
GROUPS: tuple[str, ...] = ("spinal", "foraminal", "subarticular")
ANY_SEVERE_SCALAR = 1.0
ANY_SEVERE_PART = "any_severe_spinal"  # the metric's any-severe term, scored on the spinal group
SCORE_PARTS: tuple[str, ...] = (*GROUPS, ANY_SEVERE_PART)  # what metric.score_parts reports beside the score

# Left/right mirror of each condition (a horizontal flip of an axial image swaps them).
MIRROR_CONDITION: dict[str, str] = {
    "Spinal Canal Stenosis": "Spinal Canal Stenosis",
    "Left Neural Foraminal Narrowing": "Right Neural Foraminal Narrowing",
    "Right Neural Foraminal Narrowing": "Left Neural Foraminal Narrowing",
    "Left Subarticular Stenosis": "Right Subarticular Stenosis",
    "Right Subarticular Stenosis": "Left Subarticular Stenosis",
}
# Series types whose images run along the patient's left-right axis, so a horizontal flip mirrors the side
# (on a sagittal image a flip swaps anterior and posterior, which leaves the condition's side as it is).
FLIP_MIRRORS_SIDE: frozenset[str] = frozenset({AXIAL_T2})


def flip_table(conditions: tuple[str, ...] = CONDITIONS, condition_series: dict[str, str] = CONDITION_SERIES,
               mirror: dict[str, str] = MIRROR_CONDITION,
               flip_mirrors_side: frozenset[str] = FLIP_MIRRORS_SIDE) -> tuple[int, ...]:
    """Condition index after a horizontal flip of its crop: the mirrored condition where the series type's
    flip mirrors the side, the same condition elsewhere."""
    return tuple(conditions.index(mirror.get(c, c)) if condition_series[c] in flip_mirrors_side else i
                 for i, c in enumerate(conditions))


FLIPPED_CONDITION: tuple[int, ...] = flip_table()


def condition_side(condition: str) -> int:
    """The patient's side a condition is on, read off its name: +1 left, -1 right, 0 midline."""
    return 1 if condition.startswith("Left ") else -1 if condition.startswith("Right ") else 0



def slug(text: str) -> str:
    """'Left Neural Foraminal Narrowing' -> 'left_neural_foraminal_narrowing', 'L1/L2' -> 'l1_l2'."""
    return text.lower().replace("/", "_").replace(" ", "_")


def label_column(condition: str, level: str) -> str:
    """Column of train.csv for a condition and level, e.g. 'spinal_canal_stenosis_l1_l2'."""
    return f"{slug(condition)}_{slug(level)}"


# train.csv column order: condition-major, level-minor.
LABEL_COLUMNS: tuple[str, ...] = tuple(label_column(c, lv) for c in CONDITIONS for lv in LEVELS)
COLUMN_TO_CONDITION_LEVEL: dict[str, tuple[str, str]] = {
    label_column(c, lv): (c, lv) for c in CONDITIONS for lv in LEVELS
}


def row_id(study_id: int, condition: str, level: str) -> str:
    """Submission row id: '{study_id}_{condition}_{level}' in slug form."""
    return f"{int(study_id)}_{label_column(condition, level)}"


# The row id grammar: '{study_id}_{label column}' (row_id writes it, parse_row_id and split_row_id read it).
ROW_ID_PATTERN = r"\d+_(?:" + "|".join(LABEL_COLUMNS) + ")"


def parse_row_id(rid: str) -> tuple[int | None, str]:
    """'123_spinal_canal_stenosis_l1_l2' -> (123, 'spinal_canal_stenosis_l1_l2'); the study is None where the
    row does not start with a study id (a malformed row, kept where every row must be written)."""
    head, _, column = str(rid).partition("_")
    return (int(head) if head.isdigit() else None), column


def split_row_id(rid: str) -> tuple[int, str]:
    """'123_spinal_canal_stenosis_l1_l2' -> (123, 'spinal_canal_stenosis_l1_l2'); ValueError if malformed."""
    study, column = parse_row_id(rid)
    if study is None:
        raise ValueError(f"row id {rid!r} does not start with a study id")
    return study, column


def level_of(rid: str) -> str:
    """The level of a row id ('123_spinal_canal_stenosis_l1_l2' -> 'L1/L2'); ValueError if malformed."""
    column = split_row_id(rid)[1]
    if column not in COLUMN_TO_CONDITION_LEVEL:
        raise ValueError(f"row id {rid!r} names no label column")
    return COLUMN_TO_CONDITION_LEVEL[column][1]


def row_study_ids(row_ids: Iterable[str]) -> np.ndarray:
    """Study ids of many row ids at once (int64)."""
    return np.array([split_row_id(r)[0] for r in row_ids], dtype=np.int64)


def condition_group(condition: str) -> str:
    """Metric group of a condition ('Left Neural Foraminal Narrowing' -> 'foraminal')."""
    return group_of(label_column(condition, LEVELS[0]))


def group_of(column_or_row_id: str, strict: bool = True) -> str | None:
    """Metric group ('spinal', 'foraminal' or 'subarticular') of a label column or row_id; without one,
    ValueError (strict) or None."""
    for group in GROUPS:
        if group in column_or_row_id:
            return group
    if not strict:
        return None
    raise ValueError(f"no condition group in {column_or_row_id!r}")
