"""Train one fold of one model: python train.py --fold N --model attn_resnext|cnn_lstm [--preset tiny] [--key value ...]

Several GPUs: torchrun --nproc_per_node=K train.py --fold N ...
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from src import config as config_lib  # noqa: E402
from src.engine import fit  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, epilog="Any other config key: --key value (nested: --crop.size_px 96).")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--model", default=None,
                    help=f"one of {sorted(config_lib.MODEL_DEFAULTS)}, or 'localizer' for all three heatmap models")
    ap.add_argument("--preset", default=None, help=f"one of {sorted(config_lib.PRESETS)}")
    ap.add_argument("--config", default=None, help="a YAML file of overrides")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--folds", default=None)
    ap.add_argument("--runs", default=None)
    ap.add_argument("--pretrained", default=None, help="local backbone weights file")
    ap.add_argument("--resume", action="store_true", help="continue from the fold's last.pt")
    args, rest = ap.parse_known_args(argv)
    overrides = config_lib.parse_overrides(rest)
    overrides["fold"] = args.fold
    for key in ("data_dir", "folds", "runs", "pretrained"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.resume:
        overrides["resume"] = True
    if args.model == "localizer":  # stage 1: one heatmap model per series type, same loop
        results = {}
        for part in config_lib.LOCALIZER_PARTS:
            part_overrides = dict(overrides, series_type=part, name=overrides.get("name") or f"localizer_{part}")
            results[part] = _fit(config_lib.resolve("heatmap", args.preset, args.config, part_overrides))
        return results
    return _fit(config_lib.resolve(args.model, args.preset, args.config, overrides))


def _fit(cfg: dict) -> dict:
    result = fit(cfg)
    refs = "".join(f", {k} {v:.4f}" for k, v in result.get("references", {}).items())
    print(f"{cfg['name']} fold {cfg['fold']}: best epoch {result.get('best_epoch')}, "
          f"score {result.get('score', float('nan')):.4f}{refs} -> {result['run_dir']}")
    return result


if __name__ == "__main__":
    main()
