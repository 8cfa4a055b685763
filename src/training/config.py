"""One default config; models, presets, recipe files and `--key value` flags are small overrides of it.

Resolution order: DEFAULTS <- MODEL_DEFAULTS[model] <- PRESETS[preset] <- SERIES_TYPE_DEFAULTS[series type]
(localizer only) <- --config FILE <- --key value. A preset or a recipe file (configs/*.yaml) may also hold
`per_model: {model: {...}}` and `per_series_type: {series type: {...}}` sections, applied after its common
keys, so one file sets every part of a recipe (e.g. Sagittal T2's epochs apart from the axial ones). A recipe
file may name its `preset` and list the models `make pipeline` trains (`pipeline:`).
Nested keys use dots on the command line: `--crop.size_px 96`. Values are parsed as YAML (`--lr 3e-4`,
`--amp none`, `--model_kwargs "{channels: [16, 32, 64, 128]}"`).
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from ..atomic import write_text
from ..constants import SAMPLE_WEIGHTS, SERIES_TYPES
from ..parallel import default_workers
from ..paths import SYNTH_DIR, dataset_name, folds_file_for, portable as portable_path, runs_dir_for

class ConfigError(KeyError, ValueError):
    """An unknown model, preset or config key; the message names where it came from."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


DEFAULTS: dict[str, Any] = {
    "model": "attn_resnext",
    "task": "classifier",
    "preset": None,
    "name": None,  # run folder name under runs/; defaults to the model name
    "fold": 0,
    "seed": 42,
    "data_dir": str(SYNTH_DIR),
    "dataset": None,  # derived: the data folder's name, which names the runs, folds, cache and report folders
    "cache_dir": None,  # default: input/cache/<data_dir name>-<path hash>
    "folds": None,  # default: folds/<dataset>/folds.csv
    "runs": None,  # default: runs/<dataset>
    "coords": None,  # default: <data_dir>/train_label_coordinates.csv
    "crop": {
        "n_slices": 5,
        "size_px": 128,
        "size_mm": {"spinal": 40.0, "foraminal": 32.0, "subarticular": 32.0},
        "context": 1.25,
    },
    "backbone": "resnext50_32x4d",
    "pretrained": None,  # a local weights file for the backbone (nothing is downloaded)
    "model_kwargs": {},  # passed to timm.create_model
    "embed_dim": 32,
    "hidden": 256,
    "drop": 0.2,
    "lstm_hidden": 128,
    "bidirectional": True,
    "epochs": 15,
    "batch_size": 32,
    "lr": 1.0e-3,
    "min_lr": 1.0e-6,
    "weight_decay": 1.0e-2,
    "warmup_epochs": 1.0,
    "grad_clip": 1.0,
    # The study-level model (task 'study'): its per-crop model and the transformer across a study's crops.
    # init_from: a trained per-crop run's best.pt (the same fold's) to start the per-crop model from.
    # any_severe_weight: the metric's any-severe-spinal term added to the loss, with this weight.
    "study": {"crop_model": "attn_resnext", "dim": 128, "heads": 4, "layers": 2, "init_from": None,
              "any_severe_weight": 0.0},
    "ema_decay": 0.0,  # > 0: an EMA of the weights (timm ModelEmaV3, with warm-up) is validated and saved as best.pt
    "label_smoothing": 0.0,  # classifier: cross-entropy against (1 - e) one-hot + e/3 (noisy readers' labels)
    # Training crops also cut where a localizer would put them (crops.jittered): `copies` moved variants of every
    # training point, one drawn per item. errors: null = normal offsets (sd `mm` in-plane, `slices`); 'localizer'
    # = the signed errors of this fold's localizer runs (their oof.csv) against the labels; or an errors CSV
    # (evaluate_localization.py's <report>_errors.csv).
    "jitter": {"copies": 0, "errors": None, "mm": 2.0, "slices": 0.5},
    # Labels that out-of-fold predictions strongly contradict are left out of training (noisy readers):
    # oof = predictions of the training studies by models that did not train on them (row_id + the three
    # targets, e.g. every other fold's oof.csv together); a training label whose class gets less than
    # `below` there is dropped. Validation keeps every label.
    "label_filter": {"oof": None, "below": 0.05},
    "class_weights": list(SAMPLE_WEIGHTS),
    "patience": 5,
    "amp": "bf16",  # bf16 | fp16 | none; only used on CUDA
    "device": "auto",
    "workers": "auto",  # data loader processes; auto = the usable CPUs minus one (the main process feeds the GPU)
    "prefetch": 4,  # batches each loader worker keeps ready
    "log_every": 50,  # steps between progress updates (each one waits for the GPU once)
    "channels_last": True,  # CUDA only: channels-last memory format for the 2D CNNs
    "compile": False,  # torch.compile the model (CUDA; worth it for long runs)
    "ddp_wait_s": 7200,  # under torchrun: how long the other ranks wait for rank 0 to build the caches
    "resume": True,  # continue from the run folder's last.pt when its config matches; train.py --restart sets False
    "series_type": None,  # the localizer's series type: a key of localizer.plan.PARTS (sagittal_t2, ...)
    "loc": {"size_px": 256, "sigma": 2.0, "neighbour_weight": 0.5, "decoder_channels": 64, "pos_weight": 20.0,
            "negative_ratio": 1.0,
            # Searched series: weight of a cross-entropy across the level channels where a point is labelled,
            # so each disc gets one level (plain per-channel BCE lets a net that cannot tell the levels apart
            # hedge them all, as on --variety real). On for the sagittal types (SERIES_TYPE_DEFAULTS).
            "level_weight": 0.0},
    "aug": {
        "where": "auto",  # cpu (albumentations in the loader workers) | device (batched on the GPU) | auto
        "rotate": 10.0,
        "translate": 0.1,
        "scale": [0.8, 1.0],
        "hflip": 0.5,
        "noise_std": [0.01, 0.05],
        "noise_p": 0.5,
        "affine_p": 0.8,
    },
}

MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "attn_resnext": {},
    "cnn_lstm": {"backbone": "resnet18"},
    # The baseline of issue 24: 4 plain conv blocks (model_kwargs.channels), no timm backbone, no attention.
    "plain_cnn": {"backbone": None},
    # Every crop of a study together (src/study.py); batch_size counts studies.
    "study": {"task": "study", "batch_size": 8},
    # One heatmap model per series type; `train.py --model localizer` trains one for each.
    "localizer": {"task": "localizer", "backbone": "resnet18", "batch_size": 16, "epochs": 20, "patience": 6},
}

# The localizer settings that held on realistic acquisitions (`--variety real`, docs/BENCHMARKS.md): the level
# loss on the searched sagittal series and longer schedules. Applied after the preset, which sets the sizes.
SERIES_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sagittal_t2": {"epochs": 42, "patience": 20, "loc": {"level_weight": 0.5}},
    "sagittal_t1": {"epochs": 24, "patience": 24, "loc": {"level_weight": 0.5}},
    "axial": {"epochs": 24},
}

# Keys of a recipe (preset or config file) that are not run settings.
SECTION_KEYS = ("per_model", "per_series_type")
RECIPE_KEYS = ("pipeline",)
# What `make pipeline` trains for each listed fold when a recipe names no `pipeline`, in this order.
PIPELINE = ("localizer", "attn_resnext", "cnn_lstm")

PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores for the synthetic benchmark; tests and `make demo` use it.
    "tiny": {
        "backbone": "resnet10t",
        "model_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16},
        "crop": {"n_slices": 3, "size_px": 64},
        "hidden": 64,
        "embed_dim": 16,
        "lstm_hidden": 32,
        "epochs": 12,
        "batch_size": 64,
        "lr": 2.0e-3,
        "patience": 4,
        "loc": {"size_px": 128, "decoder_channels": 32},
        "per_model": {"study": {"batch_size": 8, "study": {"dim": 64}}},
    },
}


def merge(base: dict, override: dict) -> dict:
    """Recursive dict update returning a new dict."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _number_or_value(value: Any) -> Any:
    """YAML 1.1 reads '3e-4' as a string; a string that Python reads as a finite number is that number."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if number == number and abs(number) != float("inf"):
            return number
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """['--lr', '3e-4', '--crop.size_px', '96'] -> {'lr': 0.0003, 'crop': {'size_px': 96}}."""
    out: dict = {}
    i = 0
    while i < len(pairs):
        key = pairs[i]
        if not key.startswith("--") or i + 1 >= len(pairs):
            raise ConfigError(f"command line: expected '--key value' pairs, got {pairs[i:]!r}")
        value = _number_or_value(yaml.safe_load(pairs[i + 1]))
        node = out
        parts = key[2:].replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        i += 2
    return out


def _unknown(key: str, known, where: str, prefix: str) -> ConfigError:
    close = difflib.get_close_matches(key, [str(k) for k in known], n=1, cutoff=0.6)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown config key '{prefix}{key}'{hint}")


def _check_keys(override: dict, base: dict, where: str, prefix: str = "") -> None:
    for key, value in override.items():
        if key not in base:
            raise _unknown(key, base, where, prefix)
        if isinstance(value, dict) and isinstance(base[key], dict) and key not in ("model_kwargs", "size_mm"):
            _check_keys(value, base[key], where, f"{prefix}{key}.")


def check_recipe(recipe: dict, where: str) -> None:
    """ConfigError naming `where` when a preset or recipe file has an unknown key, model or series type."""
    if not isinstance(recipe, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(recipe).__name__}")
    _check_keys({k: v for k, v in recipe.items() if k not in SECTION_KEYS + RECIPE_KEYS}, DEFAULTS, where)
    for section, names in (("per_model", MODEL_DEFAULTS), ("per_series_type", sorted(SERIES_TYPES.values()))):
        for name, override in (recipe.get(section) or {}).items():
            if name not in names:
                raise _unknown(name, names, where, f"{section}.")
            _check_keys(override or {}, DEFAULTS, where, f"{section}.{name}.")
    for model in recipe.get("pipeline") or ():
        if model not in MODEL_DEFAULTS:
            raise ConfigError(f"{where}: pipeline: unknown model '{model}'; known: {sorted(MODEL_DEFAULTS)}")


def check_saved(cfg: dict, where: str) -> None:
    """ConfigError naming `where` when a saved config.yaml holds a key the config does not know."""
    _check_keys(cfg, DEFAULTS, where)


def _apply(cfg: dict, recipe: dict, model: str, series_type: str | None) -> dict:
    """A preset's or recipe file's overrides for one part: its common keys, then its per_model section for
    the model, then (localizer) its per_series_type section for the series type."""
    cfg = merge(cfg, {k: v for k, v in recipe.items() if k not in SECTION_KEYS + RECIPE_KEYS + ("preset",)})
    cfg = merge(cfg, (recipe.get("per_model") or {}).get(model) or {})
    if model == "localizer" and series_type:
        cfg = merge(cfg, (recipe.get("per_series_type") or {}).get(series_type) or {})
    return cfg


def read_recipe(config_file: str | Path | None) -> dict:
    """A recipe file (configs/*.yaml) as a dict, checked (ConfigError naming the file); {} for None."""
    if not config_file:
        return {}
    path = Path(config_file)
    try:
        recipe = load(path) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    check_recipe(recipe, str(path))
    return recipe


def pipeline_models(config_file: str | Path | None) -> list[str]:
    """The models a recipe trains, in order (its `pipeline`, else PIPELINE)."""
    return list(read_recipe(config_file).get("pipeline") or PIPELINE)


def resolve(model: str | None = None, preset: str | None = None, config_file: str | Path | None = None,
            overrides: dict | None = None) -> dict:
    """The full config of one run."""
    overrides = dict(overrides or {})
    file_cfg = read_recipe(config_file)
    _check_keys(overrides, DEFAULTS, "command line")
    model = model or overrides.get("model") or file_cfg.get("model") or DEFAULTS["model"]
    if model not in MODEL_DEFAULTS:
        raise ConfigError(f"unknown model '{model}'; known: {sorted(MODEL_DEFAULTS)}")
    preset = preset or overrides.get("preset") or file_cfg.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; known: {sorted(PRESETS)}")
    series_type = overrides.get("series_type") or file_cfg.get("series_type")
    if model == "localizer" and series_type is not None and series_type not in SERIES_TYPES.values():
        raise ConfigError(f"unknown series type '{series_type}'; known: {sorted(SERIES_TYPES.values())}")
    cfg = merge(DEFAULTS, MODEL_DEFAULTS[model])
    if preset:
        cfg = _apply(cfg, PRESETS[preset], model, series_type)
    if model == "localizer" and series_type:
        cfg = merge(cfg, SERIES_TYPE_DEFAULTS.get(series_type, {}))
    cfg = merge(_apply(cfg, file_cfg, model, series_type), overrides)
    cfg["model"] = model
    cfg["preset"] = preset
    cfg["name"] = cfg["name"] or model
    cfg["data_dir"] = str(cfg["data_dir"])
    cfg["dataset"] = dataset_name(cfg["data_dir"])
    cfg["runs"] = str(runs_dir_for(cfg["data_dir"], cfg["runs"]))
    cfg["folds"] = str(folds_file_for(cfg["data_dir"], cfg["folds"]))
    if cfg["workers"] == "auto":
        cfg["workers"] = default_workers(reserve=1)
    return cfg


def flat_keys(node: dict = DEFAULTS, prefix: str = "") -> list[tuple[str, Any]]:
    """Every settable key as it is written on the command line ('crop.size_px') with its default."""
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        if isinstance(value, dict) and value and key not in ("model_kwargs", "size_mm"):
            out += flat_keys(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


# Config keys that hold paths: saved relative to the repository (portable), never as this machine's absolute paths.
PATH_KEYS = ("data_dir", "cache_dir", "folds", "runs", "coords", "pretrained")


def portable(cfg: dict) -> dict:
    """The config as it is saved: its paths relative to the repository (paths.portable)."""
    return {k: portable_path(v) if k in PATH_KEYS and v not in (None, "") else v for k, v in cfg.items()}


def save(cfg: dict, path: Path) -> None:
    """A resolved config as YAML (atomically), its paths portable."""
    write_text(yaml.safe_dump(portable(cfg), sort_keys=False), path)


def load(path: Path) -> dict:
    """A saved config.yaml."""
    return yaml.safe_load(Path(path).read_text())
