"""Train one fold of one model:
python train.py --fold N --model attn_resnext|cnn_lstm|localizer [--config configs/real.yaml] [--preset tiny] [--key value ...]

Writes runs/<data-dir name>/{model}/fold{N}/. `--model localizer` trains the localizer of every series type
in turn (runs/<data-dir name>/localizer_{series type}/); `--series_type sagittal_t2` trains one. A recipe
file (configs/*.yaml) sets every model and series type at once; `--print-config` prints what each part
would train with and exits. Running the same command again continues from the run's last.pt (a different
config is refused unless --restart); a last.pt that does not load is set aside.
Several GPUs: torchrun --nproc_per_node=K train.py --fold N ...
"""
from __future__ import annotations

import os
import sys

import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from src.core import cli  # noqa: E402
from src.core import config as config_lib  # noqa: E402
from src.core.progress import log  # noqa: E402
from src.core.run_folders import localizer_run  # noqa: E402
from src.localizer.plan import PLAN  # noqa: E402
from src.registry import model_names
from src.tasks import task_class  # noqa: E402
from src.training.engine import fit, shutdown  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    try:
        return _main(argv)
    finally:
        shutdown()  # under torchrun: one process group for every fit of this command


def _main(argv: list[str] | None) -> dict:
    ap = cli.parser(__doc__, epilog=_keys_epilog())
    ap.add_argument("--fold", type=int, default=0, help="the fold to hold out")
    ap.add_argument("--model", default=None, help=f"one of {model_names()} (default: the config's)")
    ap.add_argument("--preset", default=None, help=f"one of {sorted(config_lib.PRESETS)}")
    ap.add_argument("--config", default=None, help="a recipe: YAML overrides (configs/demo.yaml, variety.yaml, real.yaml)")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved config of every part (each model of the recipe, or --model; each "
                         "series type of the localizer) and exit")
    ap.add_argument("--list-models", action="store_true", help="print the models the recipe trains (its `pipeline`) and exit")
    cli.add_data_dir(ap, default=None)
    cli.add_folds(ap, default=None)
    cli.add_runs(ap, default=None)
    ap.add_argument("--pretrained", default=None,
                    help="backbone weights: true (timm's, through the Hugging Face cache), a local file, or a folder of "
                         "<backbone>.pth files (fetch_weights.py); default: the recipe's, else random initialisation")
    ap.add_argument("--restart", action="store_true", help="train from scratch over an earlier run in the same folder")
    args, rest = ap.parse_known_args(argv)
    if args.list_models:
        print(" ".join(config_lib.pipeline_models(args.config)))
        return {}
    overrides = config_lib.parse_overrides(rest)
    overrides["fold"] = args.fold
    for key in ("data_dir", "folds", "runs"):
        if getattr(args, key) is not None:
            overrides[key] = str(getattr(args, key))
    if args.pretrained is not None:  # read as a --key value pair: true/false, else a path
        overrides.update(config_lib.parse_overrides(["--pretrained", args.pretrained]))
    if args.restart:
        overrides["resume"] = False
    if args.print_config:
        models = [args.model] if args.model else config_lib.pipeline_models(args.config)
        for cfg in (c for m in models for c in _configs(m, args, overrides)):
            print(f"# {cfg['name']} fold {cfg['fold']}\n" + yaml.safe_dump(config_lib.portable(cfg), sort_keys=False))
        return {}
    configs = _configs(args.model, args, overrides)
    for cfg in configs:  # every series type's inputs before the first one trains
        config_lib.check_inputs(cfg)
    if args.model == "localizer":  # one model per series type, same loop
        return {cfg["series_type"]: _fit(cfg) for cfg in configs}
    return _fit(configs[0])


def _configs(model: str | None, args, overrides: dict) -> list[dict]:
    """The resolved config of each run the command trains: one per series type for the localizer."""
    if model != "localizer":
        return [config_lib.resolve(model, args.preset, args.config, overrides)]
    keys = [overrides["series_type"]] if overrides.get("series_type") else [p.series_type for p in PLAN]
    name = overrides.get("name")
    names = {k: (name if len(keys) == 1 else f"{name}_{k}") if name else localizer_run(k) for k in keys}
    return [config_lib.resolve("localizer", args.preset, args.config, dict(overrides, series_type=k, name=names[k]))
            for k in keys]


def _keys_epilog() -> str:
    """--help's list of every config key with its default."""
    keys = "\n".join(f"  --{k} {v}" for k, v in config_lib.flat_keys())
    return ("Any config key as --key value (nested: --crop.size_px 96; values read as YAML). The keys and their "
            f"defaults (before the model's, the preset's and the recipe's overrides; --print-config shows "
            f"those):\n{keys}")


def _fit(cfg: dict) -> dict:
    result = fit(cfg, task_class(cfg["task"]))
    refs = "".join(f", {k} {v:.4f}" for k, v in result.get("references", {}).items())
    log(f"{cfg['name']} fold {cfg['fold']}: best epoch {result.get('best_epoch')}, "
          f"score {result.get('score', float('nan')):.4f}{refs} -> {result['run_dir']}")
    return result


if __name__ == "__main__":
    sys.exit(cli.guard(main))
