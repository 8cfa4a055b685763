"""Per-study reading: a short plain-language text and a PNG sheet of what the models looked at. infer.py
writes them after the submission (--explain), so they never hold it up or put it at risk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..classifier.crops import CropSpec, build_crops, centre_unit
from ..core.atomic import write_text
from ..core.constants import CONDITIONS, LEVELS, SEVERITIES, TARGETS, row_id
from ..core.run_folders import classifier_runs, trained_folds
from ..data.cache import load_series, series_cache_path
from ..inference.context import InferenceContext
from ..training.checkpoint import load_model
from .figures import figure, save_figure


def _phrase(condition: str) -> str:
    return condition.lower()


def reading(study_id: int, probs: pd.DataFrame) -> str:
    """Findings of one study in the CNN-LSTM paper's manner, most severe first, e.g.
    'Severe left subarticular stenosis at L4/L5 (p = 0.83).'"""
    table = probs.set_index("row_id")
    findings = []
    for condition in CONDITIONS:
        for level in LEVELS:
            rid = row_id(study_id, condition, level)
            if rid not in table.index:
                continue
            p = table.loc[rid, list(TARGETS)].to_numpy(dtype=float)
            k = int(np.argmax(p))
            if k > 0:
                findings.append((-k, -p[k], f"{SEVERITIES[k]} {_phrase(condition)} at {level} (p = {p[k]:.2f})."))
    lines = [f"Study {study_id}:"]
    if findings:
        lines += [text for _, _, text in sorted(findings)]
    else:
        lines.append("No moderate or severe narrowing at any level; every condition reads as normal or mild.")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def attention_maps(runs: Path, coords: pd.DataFrame, cache_dir: Path, split: str, device: torch.device):
    """Middle crop slices and the attention-ResNeXt's stem spatial-attention maps (upsampled) per row_id, for
    every row of `coords` (the model loaded once, the crops cut once)."""
    names = sorted(classifier_runs(runs, "attn_resnext"), key=lambda n: n != "attn_resnext")  # the default run first
    if not names or not len(coords):
        return {}
    model, cfg = load_model(trained_folds(runs, names[0])[0], device)
    spec = CropSpec(**cfg["crop"])
    crops, index = build_crops(coords, cache_dir, split, spec, Path(cache_dir) / "crops", workers=1)
    out = {}
    for r in index.itertuples():
        x = centre_unit(torch.from_numpy(np.asarray(crops[r.crop]))[None], spec.size_px).to(device)
        stack = x[0].cpu().numpy()
        shown = model(x, torch.tensor([r.condition_idx], device=device), torch.tensor([r.level_idx], device=device),
                     return_attention=True)
        att = shown["attention"].float()
        att = torch.nn.functional.interpolate(att, size=stack.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        out[r.row_id] = (stack[len(stack) // 2], att.cpu().numpy())
    return out


def sheet(study_id: int, coords: pd.DataFrame, probs: pd.DataFrame, maps: dict, cache_dir: Path, split: str, path: Path) -> Path:
    """PNG: the source slices with the predicted level points, then each crop with its attention overlay."""
    points = coords[coords["study_id"] == study_id]
    slices = list(points.groupby(["series_id", "instance_number"], sort=False))[:8]
    table = probs.set_index("row_id")
    n_cols = 5
    n_rows = int(np.ceil(len(slices) / n_cols)) + len(CONDITIONS)
    fig, axes = figure(n_rows, n_cols, figsize=(3 * n_cols, 3 * n_rows))
    for ax in axes.ravel():
        ax.axis("off")
    for i, ((series_id, instance), g) in enumerate(slices):
        s = load_series(series_cache_path(cache_dir, split, study_id, series_id))
        ax = axes.ravel()[i]
        ax.imshow(s.volume[s.index_of_instance(instance)], cmap="gray")
        for r in g.itertuples():
            ax.plot(r.x, r.y, "r+", ms=8)
            ax.text(r.x + 4, r.y, f"{r.condition.split()[0][0]}{r.level}", color="yellow", fontsize=6)
        ax.set_title(f"{s.description} #{instance}", fontsize=8)
    first = int(np.ceil(len(slices) / n_cols))
    for ci, condition in enumerate(CONDITIONS):
        for li, level in enumerate(LEVELS):
            ax = axes[first + ci, li]
            rid = row_id(study_id, condition, level)
            if rid in maps:
                crop, att = maps[rid]
                ax.imshow(crop, cmap="gray")
                ax.imshow(att, cmap="jet", alpha=0.35, vmin=0, vmax=1)
            if rid in table.index:
                p = table.loc[rid, list(TARGETS)].to_numpy(dtype=float)
                k = int(np.argmax(p))
                short = condition.replace("Neural Foraminal Narrowing", "NFN").replace("Subarticular Stenosis", "SS")
                ax.set_title(f"{short.replace('Spinal Canal Stenosis', 'SCS')} {level}\n{SEVERITIES[k]} {p[k]:.2f}",
                             fontsize=7, color="red" if k == 2 else ("darkorange" if k == 1 else "black"))
    fig.suptitle(f"study {study_id}: predicted points and the attention-ResNeXt's spatial attention", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    save_figure(fig, path, dpi=80)
    return path


def explain(study_ids: list[int], coords: pd.DataFrame, probs: pd.DataFrame, ctx: InferenceContext,
            out_dir: Path) -> list[Path]:
    """Write reading_{study}.txt and sheet_{study}.png for each study: `probs` are the submission's rows,
    `coords` the points its crops were cut at (on ctx's split and cache), the attention that of the first
    attention-ResNeXt run of ctx.runs; returns the paths written."""
    coords = coords[coords["study_id"].isin([int(s) for s in study_ids])]
    maps = attention_maps(ctx.runs, coords, ctx.cache_dir, ctx.split, ctx.device)
    written = []
    for study_id in study_ids:
        text = reading(study_id, probs)
        txt = Path(out_dir) / f"reading_{study_id}.txt"
        write_text(text, txt)
        print(text, end="")
        written += [txt, sheet(study_id, coords[coords["study_id"] == study_id], probs, maps, ctx.cache_dir, ctx.split,
                               Path(out_dir) / f"sheet_{study_id}.png")]
    return written
