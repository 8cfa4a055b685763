"""Fetch the pretrained backbone weights a recipe uses into one folder, for a training box without internet:
python fetch_weights.py --config configs/real.yaml [--out weights]   (or: make weights CONFIG=FILE WEIGHTS=DIR)

For every model the recipe trains (each series type's localizer too), timm's pretrained weights of its backbone
(downloaded once into the Hugging Face cache, or read from it under HF_HUB_OFFLINE=1) are saved as
<out>/<backbone>.pth, a state dict. Copy the folder to the training box and point the recipe at it:
`pretrained: weights` (or `--pretrained weights`, or per model in `per_model:`); each model then loads the file
of its own backbone, and timm adapts the first convolution and drops the ImageNet classifier as with
`pretrained: true`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import timm  # noqa: E402

from src.core import cli  # noqa: E402
from src.core import config as config_lib  # noqa: E402
from src.core.atomic import save_torch  # noqa: E402
from src.core.paths import REPO  # noqa: E402
from src.core.progress import first_line, log  # noqa: E402
from src.registry import recipe_parts  # noqa: E402


def backbones(config_file: str | None) -> dict[str, tuple[dict, list[str]]]:
    """{backbone: (its model_kwargs, the parts of the recipe that use it)} for every timm backbone it trains."""
    found: dict[str, tuple[dict, list[str]]] = {}
    for model, series_type in recipe_parts(config_file):
        cfg = config_lib.resolve(model, None, config_file, {"series_type": series_type} if series_type else {})
        if not cfg["backbone"]:
            continue
        part = f"{model} {series_type}" if series_type else model
        kwargs, parts = found.setdefault(cfg["backbone"], (cfg["model_kwargs"], []))
        if kwargs != cfg["model_kwargs"]:  # one file per backbone name: its shapes must be the same everywhere
            raise config_lib.ConfigError(f"{config_file}: backbone '{cfg['backbone']}' has other model_kwargs in "
                                         f"{part} than in {parts[0]}; one weights file cannot serve both")
        parts.append(part)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--config", required=True, help="the recipe (configs/*.yaml) whose backbones to fetch")
    ap.add_argument("--out", type=Path, default=REPO / "weights", help="the folder to write <backbone>.pth into")
    a = ap.parse_args(argv)
    found = backbones(a.config)
    if not found:
        print(f"fetch_weights.py: {a.config} trains no timm backbone: nothing to fetch")
        return 0
    for name, (kwargs, parts) in found.items():
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except (RuntimeError, OSError, ValueError) as err:
            raise OSError(f"{name}: timm's pretrained weights could not be fetched ({first_line(err)}); "
                          "this needs internet once, or the Hugging Face cache") from None
        path = a.out / f"{name}.pth"
        save_torch(model.state_dict(), path)
        tag = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("tag", "")
        log(f"{path}: {name} ({tag}), {path.stat().st_size / 2**20:.1f} MiB, for {', '.join(parts)}")
    print(f"wrote {len(found)} backbone file(s) to {a.out}: set `pretrained: {a.out}` (or --pretrained {a.out})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
