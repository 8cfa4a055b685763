import pytest
import torch

from src.core.config import resolve
from src.core.constants import (
    AXIAL_T2,
    CONDITION_SERIES,
    CONDITIONS,
    FLIPPED_CONDITION,
    LEVELS,
    LOCALIZER_ORDER,
    MIRROR_CONDITION,
    SAGITTAL_T1,
    SERIES_TYPES,
    flip_table,
)
from src.core.registry import build_model
from src.localizer.plan import PARTS, PLAN, build_plan, part


def test_plan_is_derived_from_the_constants():
    assert [p.description for p in PLAN] == list(LOCALIZER_ORDER)
    assert [p.series_type for p in PLAN] == ["sagittal_t2", "sagittal_t1", "axial"]
    # Every condition is localized on exactly the series type it is annotated on.
    assert sorted(c for p in PLAN for c in p.conditions) == sorted(CONDITIONS)
    assert all(CONDITION_SERIES[c] == p.description for p in PLAN for c in p.conditions)
    assert [(p.searched, p.channels) for p in PLAN] == [(True, 6), (True, 6), (False, 1)]
    assert PARTS["sagittal_t1"].channel("L4/L5") == 3 and PARTS["axial"].channel("L4/L5") == 0
    assert PARTS["sagittal_t1"].sides() == {"Left Neural Foraminal Narrowing": 1, "Right Neural Foraminal Narrowing": -1}
    with pytest.raises(ValueError, match="series_type must be one of"):
        part("coronal")


def test_a_new_condition_or_series_type_is_a_data_change():
    # A new condition on an existing series type joins that part.
    extra = dict(CONDITION_SERIES, **{"Left Facet Arthropathy": AXIAL_T2})
    axial = {p.series_type: p for p in build_plan(extra)}["axial"]
    assert axial.conditions[-1] == "Left Facet Arthropathy" and axial.channels == 1
    # A new series type gets its own part, searched unless it is listed as geometry-sliced.
    coronal = "Coronal T2"
    plan = build_plan(dict(CONDITION_SERIES, **{"Scoliosis": coronal}), (*LOCALIZER_ORDER, coronal),
                      dict(SERIES_TYPES, **{coronal: "coronal"}))
    assert plan[-1].series_type == "coronal" and plan[-1].searched and plan[-1].channels == len(LEVELS) + 1
    assert plan[-1].sides() == {"Scoliosis": 0}
    # A condition on a series type the order does not know is refused.
    with pytest.raises(ValueError, match="not in the localizer's order"):
        build_plan(dict(CONDITION_SERIES, **{"Scoliosis": coronal}))
    # The flip rule follows the series type: a new left/right pair on a flipped type swaps, on another it stays.
    conditions = (*CONDITIONS, "Left Facet Arthropathy", "Right Facet Arthropathy", "Left Pars Defect", "Right Pars Defect")
    series = dict(CONDITION_SERIES, **{"Left Facet Arthropathy": AXIAL_T2, "Right Facet Arthropathy": AXIAL_T2,
                                       "Left Pars Defect": SAGITTAL_T1, "Right Pars Defect": SAGITTAL_T1})
    mirror = dict(MIRROR_CONDITION, **{"Left Facet Arthropathy": "Right Facet Arthropathy",
                                       "Right Facet Arthropathy": "Left Facet Arthropathy",
                                       "Left Pars Defect": "Right Pars Defect", "Right Pars Defect": "Left Pars Defect"})
    table = flip_table(conditions, series, mirror)
    assert table[:5] == FLIPPED_CONDITION and table[5:] == (6, 5, 7, 8)
    # A series type without conditions has no part.
    spinal_only = build_plan({"Spinal Canal Stenosis": CONDITION_SERIES["Spinal Canal Stenosis"]})
    assert SAGITTAL_T1 not in [p.description for p in spinal_only]


def test_heatmap_model_channels_follow_the_plan():
    for p in PLAN:
        cfg = resolve("localizer", "tiny", None, {"series_type": p.series_type, "loc": {"size_px": 32}})
        with torch.no_grad():
            out = build_model(cfg).eval()(torch.rand(1, 3, 32, 32))
        assert out.shape == (1, p.channels, 16, 16)
