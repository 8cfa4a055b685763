"""Train one fold of one model:
python train.py --fold N --model attn_resnext|cnn_lstm|localizer [--config configs/real.yaml] [--preset tiny] [--key value ...]

Writes runs/<data-dir name>/{model}/fold{N}/. `--model localizer` trains the localizer of every series type
in turn (runs/<data-dir name>/localizer_{series type}/); `--series_type sagittal_t2` trains one. A recipe
file (configs/*.yaml) sets every model and series type at once; `--print-config` prints what each part
would train with and exits. Running the same command again continues from the run's last.pt (a different
config is refused unless --restart); a last.pt that does not load is set aside.
Several GPUs: torchrun --nproc_per_node=K train.py --fold N ...
Every model of a recipe: python train.py --pipeline --fold N --config configs/demo.yaml [--jobs auto|K] (what
`make pipeline` runs; on a CPU device two trainings at once, each with half the cores).
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from src.core import cli  # noqa: E402
from src.core import config as config_lib  # noqa: E402
from src.core.parallel import SKIPPED, Job, default_workers, run_jobs  # noqa: E402
from src.core.progress import log  # noqa: E402
from src.core.run_folders import BEST, localizer_run, run_dir  # noqa: E402
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
    ap.add_argument("--pipeline", action="store_true",
                    help="train every model of the recipe's `pipeline` for --fold (each series type's localizer apart), "
                         "--jobs of them at once, each after the trainings it needs (a classifier jittered by the "
                         "localizer's errors after the localizer)")
    ap.add_argument("--jobs", default="auto",
                    help="--pipeline: trainings at once; auto: 2 on a CPU device of 2 or more cores, each in a process "
                         "of its own with half the cores' threads and --workers (the cores do about 1.5x the work so, "
                         "docs/BENCHMARKS.md); else 1, one after the other in this process")
    cli.add_data_dir(ap, default=None)
    cli.add_folds(ap, default=None)
    cli.add_runs(ap, default=None)
    ap.add_argument("--pretrained", default=None,
                    help="backbone weights: true (timm's, through the Hugging Face cache), a local file, or a folder of "
                         "<backbone>.pth files (fetch_weights.py); default: the recipe's, else random initialisation")
    ap.add_argument("--restart", action="store_true", help="train from scratch over an earlier run in the same folder")
    args, rest = ap.parse_known_args(argv)
    if args.list_models:
        print(" ".join(m if seed is None else f"{m}@{seed}" for m, seed in config_lib.pipeline_runs(args.config)))
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
    if args.pipeline:
        return _pipeline(args, overrides, sys.argv[1:] if argv is None else list(argv))
    if args.print_config:
        runs = [(args.model, None)] if args.model else config_lib.pipeline_runs(args.config)
        for cfg in (c for m, seed in runs for c in _configs(m, args, overrides, seed)):
            print(f"# {cfg['name']} fold {cfg['fold']}\n" + yaml.safe_dump(config_lib.portable(cfg), sort_keys=False))
        return {}
    configs = _configs(args.model, args, overrides)
    for cfg in configs:  # every series type's inputs before the first one trains
        config_lib.check_inputs(cfg)
    if args.model == "localizer":  # one model per series type, same loop
        return {cfg["series_type"]: _fit(cfg) for cfg in configs}
    return _fit(configs[0])


def _configs(model: str | None, args, overrides: dict, seed: int | None = None) -> list[dict]:
    """The resolved config of each run the command trains: one per series type for the localizer; with `seed`
    (a recipe's MODEL@SEED) the model's run at that seed, under its own name."""
    if seed is not None:
        overrides = dict(overrides, seed=seed, name=config_lib.seeded_name(model, seed))
    if model != "localizer":
        return [_warm_start(config_lib.resolve(model, args.preset, args.config, overrides))]
    keys = [overrides["series_type"]] if overrides.get("series_type") else [p.series_type for p in PLAN]
    name = overrides.get("name")
    names = {k: (name if len(keys) == 1 else f"{name}_{k}") if name else localizer_run(k) for k in keys}
    return [config_lib.resolve("localizer", args.preset, args.config, dict(overrides, series_type=k, name=names[k]))
            for k in keys]


def _warm_start(cfg: dict) -> dict:
    """A study model's `study.init_from` that names a run (no folder, no file: `cnn_lstm`) becomes that run's
    best.pt of the same fold, in the same runs folder."""
    init = (cfg.get("study") or {}).get("init_from")
    if init and "/" not in init and os.sep not in init and not Path(init).is_file():
        cfg["study"] = {**cfg["study"], "init_from": str(run_dir(cfg["runs"], init, cfg["fold"]) / BEST)}
    return cfg


def _pipeline(args, overrides: dict, argv: list[str]) -> dict | int:
    """Every part of the recipe's pipeline for the fold: in this process one after the other (jobs 1), or as
    `train.py --model ...` processes, --jobs at once; the exit code is 1 when a training failed (each named
    once), and a training that needs a failed one is not started."""
    if args.model or overrides.get("name") or args.print_config:
        raise config_lib.ConfigError("--pipeline trains each model of the recipe under its own name: drop --model, "
                                     "--name and --print-config")
    parts = [cfg for model, seed in config_lib.pipeline_runs(args.config)
             for cfg in _configs(model, args, overrides, seed)]
    # A study model warm-started from a run of this pipeline trains after it (its best.pt is not there yet).
    made_here = {str(run_dir(c["runs"], c["name"], c["fold"]) / BEST): c["name"] for c in parts}
    warm = {c["name"]: made_here.get((c.get("study") or {}).get("init_from") or "") for c in parts}
    for cfg in parts:  # every part's inputs before the first one trains
        config_lib.check_inputs(cfg if not warm[cfg["name"]] else {**cfg, "study": {**cfg["study"], "init_from": None}})
    jobs = _jobs(args.jobs, parts)
    if jobs == 1:
        return {cfg["name"]: _fit(cfg) for cfg in parts}
    from src.data.inputs import prepare_tables

    prepare_tables(parts[0])  # the series cache and folds every part reads, once, before they start together
    threads = max(1, default_workers() // jobs)
    passed = _without(argv, {"--pipeline": 0, "--jobs": 1})
    localizers = tuple(cfg["name"] for cfg in parts if cfg["task"] == "localizer")
    own = [] if "--workers" in {a.split("=")[0] for a in passed} else ["--workers", str(threads)]
    runs = []
    for cfg in parts:
        which = ["--model", cfg["model"]] + (["--series_type", cfg["series_type"]] if cfg["task"] == "localizer"
                                             else ["--seed", str(cfg["seed"]), "--name", cfg["name"]])
        jitter = cfg.get("jitter") or {}
        needs = localizers if cfg["task"] != "localizer" and jitter.get("copies") and jitter.get("errors") == "localizer" else ()
        needs = (*needs, warm[cfg["name"]]) if warm[cfg["name"]] else needs
        child = [*passed, *which, *own]
        runs.append(Job(cfg["name"], [sys.executable, str(Path(__file__).resolve()), *child], needs,
                        {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
                        call=functools.partial(_forked_training, child, threads)))
    log(f"fold {args.fold}: {len(runs)} trainings, {jobs} at once with {threads} thread(s) each: "
        + ", ".join(r.name + (f" (after {', '.join(r.needs)})" if r.needs else "") for r in runs))
    codes = run_jobs(runs, jobs)
    failed = {n: c for n, c in codes.items() if c != 0}
    if failed:
        said = ", ".join(f"{n} (not started: a training it needs failed)" if c == SKIPPED else f"{n} (exit {c})"
                         for n, c in failed.items())
        log(f"fold {args.fold}: {len(failed)} of {len(runs)} trainings failed: {said}")
        return 1
    log(f"fold {args.fold}: {len(runs)} trainings done")
    return 0


def _forked_training(argv: list[str], threads: int) -> int:
    """One training of --pipeline in a fork of its process (core.parallel.Job.call): the command line it would
    have had, with `threads` threads (the environment's OMP_NUM_THREADS is read when torch loads, in the parent)."""
    import torch

    torch.set_num_threads(threads)
    return cli.guard(main, argv)


def _jobs(asked: str, parts: list[dict]) -> int:
    """--jobs as a count: auto is 2 on a CPU device with 2 or more cores, else 1; always 1 under torchrun (its
    processes already share the machine)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    if asked != "auto":
        try:
            jobs = int(asked)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise config_lib.ConfigError(f"--jobs {asked}: expected auto or a count of at least 1")
        return min(jobs, len(parts))
    if len(parts) < 2 or default_workers() < 2:
        return 1
    from src.core.device import pick_device

    return 2 if pick_device(parts[0]["device"]).type == "cpu" else 1


def _without(argv: list[str], flags: dict[str, int]) -> list[str]:
    """argv less the given flags (as `--flag value` or `--flag=value`), each with its count of values."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
        elif arg.split("=")[0] in flags:
            skip = 0 if "=" in arg else flags[arg.split("=")[0]]
        else:
            out.append(arg)
    return out


def _keys_epilog() -> str:
    """--help's list of every config key with its default."""
    keys = "\n".join(f"  --{k} {v}" for k, v in config_lib.flat_keys())
    return ("Any config key as --key value (nested: --crop.size_px 96; values read as YAML). The keys and their "
            f"defaults (before the model's, the preset's and the recipe's overrides; --print-config shows "
            f"those):\n{keys}")


def _fit(cfg: dict) -> dict:
    result = fit(cfg, task_class(cfg["task"]))
    refs = "".join(f", {k} {v:.4f}" for k, v in result.get("references", {}).items())
    log(f"{cfg['name']} fold {cfg['fold']}: {cfg['keep']} epoch {result.get('best_epoch')}, "
          f"score {result.get('score', float('nan')):.4f}{refs} -> {result['run_dir']}")
    return result


if __name__ == "__main__":
    sys.exit(cli.guard(main))
