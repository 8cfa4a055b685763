"""How far predicted points are from labelled ones: per point, then per condition."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache import load_series, series_cache_path
from ..data.dicom import Series


def point_errors(pred: pd.DataFrame, truth: pd.DataFrame, cache_dir: Path, split: str) -> pd.DataFrame:
    """One row per labelled point: in-plane error (px, mm) on the predicted slice, 3D error, right slice (+-1),
    and the signed error: dx_mm, dy_mm (predicted minus labelled along the predicted slice's columns and rows)
    and dslice (slices from the labelled point to the predicted slice), which crops.jittered samples from.

    The labelled 3D point is projected onto the predicted slice, so points predicted on another series
    (several axial series) are compared fairly; a labelled point without a prediction is a miss.
    """
    keys = ["study_id", "condition", "level"]
    merged = truth.merge(pred, on=keys, how="left", suffixes=("_true", ""))
    loaded: dict[int, Series] = {}

    def get(study_id: int, series_id: int) -> Series:
        if series_id not in loaded:
            loaded[series_id] = load_series(series_cache_path(cache_dir, split, study_id, series_id), pixels=False)
        return loaded[series_id]

    out = []
    for r in merged.itertuples():
        row = {"study_id": r.study_id, "condition": r.condition, "level": r.level, "error_px": np.nan,
               "error_mm": np.nan, "error_3d_mm": np.nan, "instance_ok": False, "dx_mm": np.nan, "dy_mm": np.nan,
               "dslice": np.nan,
               "confidence": getattr(r, "confidence", np.nan)}
        if not np.isnan(r.x):
            truth_s, pred_s = get(r.study_id, int(r.series_id_true)), get(r.study_id, int(r.series_id))
            kt, kp = truth_s.index_of_instance(r.instance_number_true), pred_s.index_of_instance(int(r.instance_number))
            q = truth_s.pixel_to_patient(kt, r.x_true, r.y_true)
            p = pred_s.pixel_to_patient(kp, r.x, r.y)
            xq, yq, dist = pred_s.patient_to_pixel(kp, q)
            row_mm, col_mm = pred_s.spacings[kp]
            row.update(error_px=float(np.hypot(r.x - xq, r.y - yq)),
                       error_mm=float(np.hypot((r.x - xq) * col_mm, (r.y - yq) * row_mm)),
                       error_3d_mm=float(np.linalg.norm(p - q)),
                       dx_mm=float((r.x - xq) * col_mm), dy_mm=float((r.y - yq) * row_mm))
            if int(r.series_id) == int(r.series_id_true):
                row["dslice"] = float(kp - kt)
            else:  # the labelled point's distance from the predicted slice, in slice gaps
                row["dslice"] = float(np.round(-float(dist) / max(pred_s.slice_gap, 1e-6)))
            row["instance_ok"] = abs(row["dslice"]) <= 1
        out.append(row)
    return pd.DataFrame(out, columns=list(ERROR_COLUMNS))


ERROR_COLUMNS = ("study_id", "condition", "level", "error_px", "error_mm", "error_3d_mm", "instance_ok", "confidence",
                 "dx_mm", "dy_mm", "dslice")
LEVEL_OFF_MM = 15.0  # a 3D error this large is another disc: neighbouring discs are 25-45 mm apart


def summarize_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """Per condition: points, misses, median and 95th-percentile error (mm, px), share within 5 mm,
    share on the right slice (+-1), share a level off (3D error over LEVEL_OFF_MM) and the median confidence
    of those points and of the others. A labelled point without a prediction counts as outside and wrong."""
    rows = []
    for condition, g in errors.groupby("condition", sort=False):
        found = g["error_mm"].notna()
        off = g["error_3d_mm"] > LEVEL_OFF_MM
        rows.append({
            "condition": condition, "points": len(g), "missed": int((~found).sum()),
            "median_mm": g["error_mm"].median(), "p95_mm": g["error_mm"].quantile(0.95),
            "median_px": g["error_px"].median(), "p95_px": g["error_px"].quantile(0.95),
            "within_5mm": float((g["error_mm"] <= 5.0).mean()), "right_slice": float(g["instance_ok"].mean()),
            "level_off": float(off.mean()), "confidence_off": g.loc[off, "confidence"].median(),
            "confidence_ok": g.loc[found & ~off, "confidence"].median(),
        })
    return pd.DataFrame(rows)
