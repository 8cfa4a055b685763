"""Train one fold of one model: python train.py --fold N --model attn_resnext|cnn_lstm|localizer [--preset tiny] [--key value ...]

`--model localizer` trains the localizer of every series type in turn (runs/localizer_{series type}/);
`--series_type sagittal_t2` trains one. Running the same command again continues from the run's last.pt
(a different config is refused unless --restart); a last.pt that does not load is set aside. Several GPUs: torchrun --nproc_per_node=K train.py --fold N ...
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from src import cli  # noqa: E402
from src import config as config_lib  # noqa: E402
from src.engine import fit, shutdown  # noqa: E402
from src.localizer.plan import PLAN  # noqa: E402
from src.run_folders import localizer_run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    try:
        return _main(argv)
    finally:
        shutdown()  # under torchrun: one process group for every fit of this command


def _main(argv: list[str] | None) -> dict:
    ap = cli.parser(__doc__, epilog="Any other config key: --key value (nested: --crop.size_px 96).")
    ap.add_argument("--fold", type=int, default=0, help="the fold to hold out")
    ap.add_argument("--model", default=None, help=f"one of {sorted(config_lib.MODEL_DEFAULTS)} (default: the config's)")
    ap.add_argument("--preset", default=None, help=f"one of {sorted(config_lib.PRESETS)}")
    ap.add_argument("--config", default=None, help="a YAML file of overrides")
    cli.add_data_dir(ap, default=None)
    cli.add_folds(ap, default=None)
    cli.add_runs(ap, default=None)
    ap.add_argument("--pretrained", default=None, help="local backbone weights file")
    ap.add_argument("--resume", action="store_true", help="continue from the fold's last.pt (the default; kept for old scripts)")
    ap.add_argument("--restart", action="store_true", help="train from scratch over an earlier run in the same folder")
    args, rest = ap.parse_known_args(argv)
    overrides = config_lib.parse_overrides(rest)
    overrides["fold"] = args.fold
    for key in ("data_dir", "folds", "runs", "pretrained"):
        if getattr(args, key) is not None:
            overrides[key] = str(getattr(args, key))
    if args.restart:
        overrides["resume"] = False
    if args.model == "localizer":  # one model per series type, same loop
        keys = [overrides["series_type"]] if overrides.get("series_type") else [p.key for p in PLAN]
        name = overrides.get("name")
        names = {k: (name if len(keys) == 1 else f"{name}_{k}") if name else localizer_run(k) for k in keys}
        return {k: _fit(config_lib.resolve("localizer", args.preset, args.config,
                                           dict(overrides, series_type=k, name=names[k]))) for k in keys}
    return _fit(config_lib.resolve(args.model, args.preset, args.config, overrides))


def _fit(cfg: dict) -> dict:
    result = fit(cfg)
    refs = "".join(f", {k} {v:.4f}" for k, v in result.get("references", {}).items())
    print(f"{cfg['name']} fold {cfg['fold']}: best epoch {result.get('best_epoch')}, "
          f"score {result.get('score', float('nan')):.4f}{refs} -> {result['run_dir']}")
    return result


if __name__ == "__main__":
    sys.exit(cli.guard(main))
