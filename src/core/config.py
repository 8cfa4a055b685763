"""One default config; models, presets, recipe files and `--key value` flags are small overrides of it.

Resolution order: DEFAULTS <- the model's registered defaults (core.registry) <- PRESETS[preset] <-
SERIES_TYPE_DEFAULTS[series type] (localizer only) <- --config FILE <- --key value. A preset or a recipe file
(configs/*.yaml) may also hold `per_model: {model: {...}}` and `per_series_type: {series type: {...}}`
sections, applied after its common keys, so one file sets every part of a recipe (e.g. Sagittal T2's epochs
apart from the axial ones). A recipe file may name its `preset` and list the models `make pipeline` trains
(`pipeline:`).
Nested keys use dots on the command line: `--crop.size_px 96`. Values are parsed as YAML (`--lr 3e-4`,
`--amp none`, `--model_kwargs "{channels: [16, 32, 64, 128]}"`).
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from . import registry
from .atomic import write_text
from .constants import GROUPS, SAMPLE_WEIGHTS, SERIES_TYPES
from .faults import InputError
from .parallel import default_workers
from .paths import SYNTH_DIR, dataset_name, folds_file_for, runs_dir_for
from .paths import portable as portable_path


class ConfigError(InputError, KeyError, ValueError):
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
    # Backbone weights: null = random initialisation; true = timm's pretrained weights for the backbone (downloaded
    # once into the Hugging Face cache; fetch_weights.py saves them as files for an offline box); a path = a local
    # state-dict file, or a folder holding <backbone>.pth (what fetch_weights.py writes).
    "pretrained": None,
    "model_kwargs": {},  # passed to timm.create_model
    # The per-crop classifiers' ResNet stem max-pool; false: every stage at twice the resolution (about 3x the
    # compute). On the tiny preset's 64 px crops of --variety real it scored worse on both sets tried
    # (docs/BENCHMARKS.md, issue 31).
    "stem_pool": True,
    "embed_dim": 32,
    "hidden": 256,
    "drop": 0.2,
    # The per-crop classifiers' last layer: mlp = 3 free logits; ordinal = a severity score and its spread per
    # crop, cut at two learned thresholds (normal/mild < moderate < severe), the metric's class weights added
    # to its log-probabilities so the weighted loss fits calibrated grades (models.OrdinalLogits).
    "head": "mlp",
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
    # init_from: a trained per-crop run's best.pt (the same fold's) to start the per-crop model from, or the name
    # of a run in the same runs folder (`cnn_lstm`: its best.pt of the same fold, trained first by --pipeline).
    # any_severe_weight: the metric's any-severe-spinal term added to the loss, with this weight.
    # freeze_crop: the per-crop model's weights (and its normalisation statistics) stay as init_from left them;
    # only the transformer across the crops learns.
    "study": {"crop_model": "attn_resnext", "dim": 128, "heads": 4, "layers": 2, "init_from": None,
              "any_severe_weight": 0.0, "freeze_crop": False},
    "ema_decay": 0.0,  # > 0: an EMA of the weights (timm ModelEmaV3, with warm-up) is validated and saved as best.pt
    "label_smoothing": 0.0,  # classifier: cross-entropy against (1 - e) one-hot + e/3 (noisy readers' labels)
    # Training crops also cut where a localizer would put them (crops.jittered): `copies` moved variants of every
    # training point, one drawn per item. errors: null = normal offsets (sd `mm` in-plane, `slices`); 'localizer'
    # = the signed errors of this fold's localizer runs (their oof.csv) against the labels; or an errors CSV
    # (evaluate_localization.py's <report>_errors.csv). seed: the draw's (null: the run's seed); the runs of a
    # training-seed ensemble (MODEL@SEED) that set it share one jittered crop store.
    "jitter": {"copies": 0, "errors": None, "mm": 2.0, "slices": 0.5, "seed": None},
    # Other series a condition group's training points are cut on as well, the same 3D point on the nearest slice
    # over the study's series of each type named (sagittal_t1, sagittal_t2, axial): each such crop is one more
    # training item with the point's label (the per-crop classifiers; validation and the study model read the
    # labelled series' crop alone, test time too unless `test_views`). E.g. {foraminal: [sagittal_t2]}: the
    # foramina on Sagittal T2/STIR too.
    "views": {"spinal": [], "foraminal": [], "subarticular": []},
    # Of those, the series a group's points are read on at test time too (and in oof_predicted.csv), each crop's
    # prediction averaged with the point's own crop's.
    "test_views": {"spinal": [], "foraminal": [], "subarticular": []},
    # Labels that out-of-fold predictions strongly contradict are left out of training (noisy readers):
    # oof = predictions of the training studies by models that did not train on them (row_id + the three
    # targets, e.g. every other fold's oof.csv together); a training label whose class gets less than
    # `below` there is dropped. Validation keeps every label.
    "label_filter": {"oof": None, "below": 0.05},
    "class_weights": list(SAMPLE_WEIGHTS),
    # How the classifiers' loss takes the class weights: weights = cross-entropy weighted by them (each item
    # counts by its grade's weight); logit_adjusted = unweighted cross-entropy of logits - log(class_weights), whose
    # minimum is the same metric-optimal softmax with every item counting the same.
    "loss_weighting": "weights",
    "patience": 5,
    # Which epoch's weights a run keeps (best.pt, and its predictions as oof.csv): best = the lowest validation
    # score (early stop after `patience` epochs without one); last = the end of the schedule, patience unused.
    "keep": "best",
    "amp": "bf16",  # bf16 | fp16 | none; only used on CUDA (device.training_amp: the CPU trains in fp32)
    "device": "auto",
    "workers": "auto",  # cache and loader processes; auto = the usable CPUs minus one (the main process feeds the GPU)
    # Training's data loader processes: auto = `workers`, and none on the CPU device where the loader only
    # gathers crops (the classifiers, augmented batched on the device: engine.loader_processes); the localizer
    # augments in its loader, which keeps its processes. (The classifiers' albumentations in the training
    # process, aug.where cpu with --loader_workers 0, scored worse held out at 3 of 3 seeds: docs/BENCHMARKS.md.)
    "loader_workers": "auto",
    "prefetch": 4,  # batches each loader worker keeps ready
    "log_every": 50,  # steps between progress updates (each one waits for the GPU once)
    "channels_last": True,  # channels-last memory format for the 2D CNNs (CUDA and CPU: oneDNN is faster with it)
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
        "where": "auto",  # auto = device (batched on the training device, GPU or CPU) | cpu (albumentations in the loader)
        "rotate": 10.0,
        "translate": 0.1,
        "scale": [0.8, 1.0],
        "hflip": 0.5,
        # Head-feet on sagittal crops, front-back on axial ones (sides kept); not in the attention paper's list.
        "vflip": 0.0,
        "noise_std": [0.01, 0.05],
        "noise_p": 0.5,
        "affine_p": 0.8,
        # Intensity, one draw per crop, each with probability intensity_p (not in the attention paper's list; off
        # here, on in the severity models' registered defaults, models.SEVERITY_DEFAULTS): x ** gamma with gamma
        # uniform in the range (albumentations' RandomGamma), then x * (1 + c) + b with c, b uniform in
        # +-contrast and +-brightness (RandomBrightnessContrast).
        "gamma": [1.0, 1.0],
        "contrast": 0.0,
        "brightness": 0.0,
        "intensity_p": 0.5,
    },
}

# The localizer settings that held on realistic acquisitions (`--variety real`, docs/BENCHMARKS.md): the level
# loss on the searched sagittal series and each type's schedule (in the localizer's batches of 16 slices).
# Applied after the preset, which sets the sizes. Sagittal T1 (the foramina) 20 epochs: at 10 its validation loss
# still fell, and at 20 the test points within 5 mm went 98.9-99.6% -> 99.4-99.9% and the variety recipe's
# ensemble scored 0.005-0.008 better on four --variety real sets (docs/BENCHMARKS.md, eighteenth session).
SERIES_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sagittal_t2": {"epochs": 20, "patience": 10, "loc": {"level_weight": 0.5}},
    "sagittal_t1": {"epochs": 20, "patience": 10, "loc": {"level_weight": 0.5}},
    "axial": {"epochs": 8},
}

# Mapping-valued keys whose own keys are free (timm's keyword arguments; a crop size per condition group):
# never checked, completed or merged key by key against their defaults.
FREE_FORM_KEYS = ("model_kwargs", "size_mm")
# Keys of a recipe (preset or config file) that are not run settings.
SECTION_KEYS = ("per_model", "per_series_type")
RECIPE_KEYS = ("pipeline", "ensemble")
# What `make pipeline` trains for each listed fold when a recipe names no `pipeline`, in this order.
PIPELINE = ("localizer", "attn_resnext", "cnn_lstm")

# The final stage ensemble.py fits (a recipe's `ensemble:` section): the stage asked for (the plain mean; weights
# and temperatures; the metric-fitted stacker, alone or with the study's context), kept only where its score by
# nested folds over the studies beats the plain mean's; `shrink` pulls fitted weights toward equal and
# temperatures toward 1 (inference.ensemble.fit_ensemble).
ENSEMBLE_STAGES = ("mean", "weights", "stacker", "stacker_context")
ENSEMBLE_DEFAULTS: dict[str, Any] = {"stage": "weights", "nested_folds": 5, "shrink": 0.02}

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
        # No early stop inside the preset's own schedule: the cosine rate's last epochs are where a noisy
        # validation score improves (on --variety real, patience 4 stopped attn_resnext at epoch 8 of 12 at 0.497
        # out of fold; run to the end it reached 0.378, docs/BENCHMARKS.md "CPU cost").
        "patience": 12,
        "loc": {"size_px": 128, "decoder_channels": 32},
        # The localizer keeps its registered 16 slices a batch: a localizer epoch is about a thousand slices, and
        # the 4x optimizer steps of 16 against 64 reach the same accuracy in half the epochs or fewer.
        "per_model": {"localizer": {"batch_size": 16}, "study": {"batch_size": 8, "study": {"dim": 64}}},
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
        if isinstance(value, dict) and isinstance(base[key], dict) and key not in FREE_FORM_KEYS:
            _check_keys(value, base[key], where, f"{prefix}{key}.")


def check_recipe(recipe: dict, where: str) -> None:
    """ConfigError naming `where` when a preset or recipe file has an unknown key, model or series type."""
    if not isinstance(recipe, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(recipe).__name__}")
    _check_keys({k: v for k, v in recipe.items() if k not in SECTION_KEYS + RECIPE_KEYS}, DEFAULTS, where)
    for section, names in (("per_model", registry.model_names()), ("per_series_type", sorted(SERIES_TYPES.values()))):
        for name, override in (recipe.get(section) or {}).items():
            if name not in names:
                raise _unknown(name, names, where, f"{section}.")
            _check_keys(override or {}, DEFAULTS, where, f"{section}.{name}.")
    for entry in recipe.get("pipeline") or ():
        pipeline_entry(entry, where)
    ensemble = recipe.get("ensemble") or {}
    _check_keys(ensemble, ENSEMBLE_DEFAULTS, where, "ensemble.")
    check_values(ensemble, ENSEMBLE_DEFAULTS, {where: {"ensemble": ensemble}}, "ensemble.")


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


def ensemble_settings(config_file: str | Path | None) -> dict:
    """The final stage a recipe asks for (its `ensemble:` section over ENSEMBLE_DEFAULTS)."""
    return {**ENSEMBLE_DEFAULTS, **(read_recipe(config_file).get("ensemble") or {})}


def pipeline_entry(entry: Any, where: str = "pipeline") -> tuple[str, int | None]:
    """A recipe's `pipeline` entry as (model, seed): `cnn_lstm` -> ('cnn_lstm', None), the run of the config's seed;
    `cnn_lstm@7` -> ('cnn_lstm', 7), one more run of the model at seed 7 (named by seeded_name), for an ensemble of
    training seeds. ConfigError naming `where` for an unknown model or a seed that is not a whole number."""
    model, sep, seed = str(entry).partition("@")
    if model not in registry.model_names():
        raise ConfigError(f"{where}: pipeline: unknown model '{model}'; known: {registry.model_names()}")
    if not sep:
        return model, None
    if model == "localizer" or not seed.isdigit():
        raise ConfigError(f"{where}: pipeline: '{entry}': expected MODEL@SEED with a whole-number seed "
                          "(a classifier's extra training seed; inference reads one localizer per series type)")
    return model, int(seed)


def seeded_name(model: str, seed: int) -> str:
    """The run folder of a recipe's extra training seed of a model (`cnn_lstm@7` -> cnn_lstm_seed7)."""
    return f"{model}_seed{seed}"


def pipeline_runs(config_file: str | Path | None) -> list[tuple[str, int | None]]:
    """(model, seed) of every run a recipe trains, in order (its `pipeline`, else PIPELINE; pipeline_entry)."""
    where = str(config_file) if config_file else "pipeline"
    return [pipeline_entry(e, where) for e in read_recipe(config_file).get("pipeline") or PIPELINE]


def pipeline_models(config_file: str | Path | None) -> list[str]:
    """The models a recipe trains, in order, each once (an extra training seed is the same model)."""
    return list(dict.fromkeys(model for model, _ in pipeline_runs(config_file)))


def model_defaults_of(model: str) -> dict:
    """A registered model's overrides of DEFAULTS, its task included (registry.UnknownModel if none)."""
    entry = registry.model_entry(model)
    return {"task": entry.task, **entry.defaults}


def resolve(model: str | None = None, preset: str | None = None, config_file: str | Path | None = None,
            overrides: dict | None = None) -> dict:
    """The full config of one run."""
    overrides = dict(overrides or {})
    file_cfg = read_recipe(config_file)
    _check_keys(overrides, DEFAULTS, "command line")
    model = model or overrides.get("model") or file_cfg.get("model") or DEFAULTS["model"]
    try:
        model_defaults = model_defaults_of(model)
    except registry.UnknownModel as err:
        raise ConfigError(str(err)) from None
    preset = preset or overrides.get("preset") or file_cfg.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; known: {sorted(PRESETS)}")
    series_type = overrides.get("series_type") or file_cfg.get("series_type")
    if model == "localizer" and series_type is not None and series_type not in SERIES_TYPES.values():
        raise ConfigError(f"unknown series type '{series_type}'; known: {sorted(SERIES_TYPES.values())}")
    cfg = merge(DEFAULTS, model_defaults)
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
    layers = {"command line": overrides, str(config_file): _apply({}, file_cfg, model, series_type),
              f"preset {preset}": _apply({}, PRESETS.get(preset) or {}, model, series_type)}
    check_values(cfg, merge(DEFAULTS, model_defaults), layers)
    for group, types in cfg["test_views"].items():
        if set(types) - set(cfg["views"].get(group, [])):
            raise ConfigError(f"{_origin(f'test_views.{group}', layers)}: {types} must be among views.{group} "
                              f"({cfg['views'].get(group, [])}): a model reads at test time only what it trained on")
    return cfg


# Keys whose value is one of a few words.
CHOICES = {"amp": ("bf16", "fp16", "none"), "aug.where": ("auto", "cpu", "device"), "device": ("auto", "cpu", "cuda", "mps"),
           "head": ("mlp", "ordinal"), "keep": ("best", "last"), "loss_weighting": ("weights", "logit_adjusted"),
           "ensemble.stage": ENSEMBLE_STAGES}
# Keys that must be at least this (counts, sizes, rates).
MINIMUM = {"epochs": 1, "batch_size": 1, "patience": 1, "crop.n_slices": 1, "crop.size_px": 8, "loc.size_px": 8, "fold": 0,
           "lr": 0.0, "jitter.copies": 0, "log_every": 1, "prefetch": 1, "warmup_epochs": 0.0,
           "ensemble.nested_folds": 2, "ensemble.shrink": 0.0, "aug.contrast": 0.0, "aug.brightness": 0.0,
           "aug.intensity_p": 0.0}
# Keys that draw uniformly in [low, high]: two numbers, low <= high, above this (`True`: 0 itself allowed).
RANGES = {"aug.gamma": False, "aug.scale": False, "aug.noise_std": True}
# Keys that are probabilities.
PROBABILITIES = ("aug.hflip", "aug.vflip", "aug.noise_p", "aug.affine_p", "aug.intensity_p")
# Keys that list series types (SERIES_TYPES' names).
SERIES_TYPE_LISTS = tuple(f"{key}.{group}" for key in ("views", "test_views") for group in GROUPS)
# Keys whose default is null, and what they take instead.
NULLABLE = {"pretrained": (bool, str), "name": (str,), "preset": (str,), "dataset": (str,), "cache_dir": (str,),
            "folds": (str,), "runs": (str,), "coords": (str,), "series_type": (str,), "backbone": (str,),
            "study.init_from": (str,), "jitter.errors": (str,), "jitter.seed": (int,), "label_filter.oof": (str,)}


def _kind(default: Any) -> tuple[tuple[type, ...], str]:
    """The types a value may have where the default is `default`, and their name for a message."""
    if isinstance(default, bool):
        return (bool,), "true or false"
    if isinstance(default, int):
        return (int,), "an integer"
    if isinstance(default, float):
        return (int, float), "a number"
    if isinstance(default, str):
        return (str,), "a string"
    if isinstance(default, (list, tuple)):
        return (list, tuple), "a list"
    if isinstance(default, dict):
        return (dict,), "a mapping"
    return (object,), "anything"


def _origin(key: str, layers: dict[str, dict]) -> str:
    """Where a key's value came from: the last layer (command line, recipe file, preset) that sets it."""
    for where, layer in layers.items():
        node: Any = layer
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is not KeyError:
            return f"{where}: --{key}" if where == "command line" else f"{where}: {key}"
    return f"config: {key}"


def _bad_value(key: str, value: Any, default: Any) -> str | None:
    """What is wrong with one value (None when it is fine), judged against its default."""
    if default is None:
        kinds = NULLABLE.get(key)
        if value is None or kinds is None or (isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)):
            return None
        names = {bool: "true/false", int: "a whole number", str: "a string"}
        return f"expected {' or '.join(names[k] for k in kinds)} (or null), got {value!r}"
    if key in ("workers", "loader_workers"):
        if key == "loader_workers" and value == "auto":
            return None
        counts = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if counts else f"expected 'auto' or a count, got {value!r}"
    kinds, name = _kind(default)
    if not isinstance(value, kinds) or (isinstance(value, bool) and not isinstance(default, bool)):
        return f"expected {name}, got {value!r}"
    if isinstance(default, (list, tuple)) and default and not all(
            isinstance(v, _kind(default[0])[0]) and not isinstance(v, bool) for v in value):
        return f"expected a list of {_kind(default[0])[1].replace('an ', '').replace('a ', '')}s, got {value!r}"
    choices = registry.task_names() if key == "task" else CHOICES.get(key)
    if choices and not (value in choices or (key == "device" and str(value).startswith("cuda:"))):
        return f"expected one of {', '.join(choices)}, got {value!r}"
    if key in MINIMUM and (value < MINIMUM[key] or (key == "lr" and value <= 0)):
        return f"expected {'more than' if key == 'lr' else 'at least'} {MINIMUM[key]}, got {value!r}"
    if key in RANGES and not (len(value) == 2 and value[0] <= value[1]
                              and (value[0] >= 0 if RANGES[key] else value[0] > 0)):
        return f"expected [low, high] with {'0 <=' if RANGES[key] else '0 <'} low <= high, got {value!r}"
    if key in SERIES_TYPE_LISTS and not all(v in SERIES_TYPES.values() for v in value):
        return f"expected a list of series types ({', '.join(SERIES_TYPES.values())}), got {value!r}"
    if key in PROBABILITIES and not 0 <= value <= 1:
        return f"expected a probability between 0 and 1, got {value!r}"
    return None


def check_values(cfg: dict, defaults: dict, layers: dict[str, dict], prefix: str = "") -> None:
    """ConfigError naming the key and where it was set when a value does not fit its default: a number stays a
    number, a switch true or false, a word one of its choices, a count at least its minimum."""
    for key, default in defaults.items():
        if key not in cfg:
            continue
        value, path = cfg[key], f"{prefix}{key}"
        if isinstance(default, dict) and isinstance(value, dict) and key not in FREE_FORM_KEYS:
            check_values(value, default, layers, f"{path}.")
            continue
        if key == "size_mm" and isinstance(value, dict):
            value = list(value.values()) or [0.0]
            default = [1.0]
        problem = _bad_value(path, value, default)
        if problem:
            raise ConfigError(f"{_origin(path, layers)}: {problem}")


def pretrained_file(pretrained: str | Path, backbone: str) -> Path:
    """The local weights file a `pretrained` path names: the file itself, or <folder>/<backbone>.pth for a
    folder (as fetch_weights.py writes it, so one folder serves every backbone of a recipe)."""
    path = Path(pretrained)
    return path / f"{backbone}.pth" if path.is_dir() else path


def check_inputs(cfg: dict) -> None:
    """Before any work: every file the run will read exists (ConfigError naming the key and the file): the
    data folder, pretrained weights, coordinates, the jitter's errors CSV, the label filter's predictions and
    the study model's warm start."""
    data_dir = Path(cfg["data_dir"])
    if not (data_dir / "train.csv").is_file():
        raise ConfigError(f"data_dir: {data_dir / 'train.csv'}: not found (--data-dir must be a competition-format folder)")
    pretrained = cfg.get("pretrained")
    if isinstance(pretrained, str) and not pretrained_file(pretrained, cfg["backbone"]).is_file():
        if Path(pretrained).is_dir():
            raise ConfigError(f"pretrained: {pretrained_file(pretrained, cfg['backbone'])}: not found (the folder "
                              f"holds no weights for backbone '{cfg['backbone']}'; fetch_weights.py writes them)")
        raise ConfigError(f"pretrained: {pretrained}: no such weights file or folder")
    files = {"coords": cfg.get("coords"), "study.init_from": (cfg.get("study") or {}).get("init_from"),
             "label_filter.oof": (cfg.get("label_filter") or {}).get("oof")}
    errors = (cfg.get("jitter") or {}).get("errors")
    if (cfg.get("jitter") or {}).get("copies") and errors not in (None, "localizer"):
        files["jitter.errors"] = errors
    for key, path in files.items():
        if path and not Path(path).exists():
            raise ConfigError(f"{key}: {path}: not found")


def flat_keys(node: dict = DEFAULTS, prefix: str = "") -> list[tuple[str, Any]]:
    """Every settable key as it is written on the command line ('crop.size_px') with its default."""
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        if isinstance(value, dict) and value and key not in FREE_FORM_KEYS:
            out += flat_keys(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


# Config keys that hold paths: saved relative to the repository (portable), never as this machine's absolute paths.
PATH_KEYS = ("data_dir", "cache_dir", "folds", "runs", "coords", "pretrained")


def portable(cfg: dict) -> dict:
    """The config as it is saved: its paths relative to the repository (paths.portable)."""
    return {k: portable_path(v) if k in PATH_KEYS and isinstance(v, str) and v else v for k, v in cfg.items()}


def save(cfg: dict, path: Path) -> None:
    """A resolved config as YAML (atomically), its paths portable."""
    write_text(yaml.safe_dump(portable(cfg), sort_keys=False), path)


def load(path: Path) -> dict:
    """A saved config.yaml."""
    return yaml.safe_load(Path(path).read_text())


def with_new_keys(saved: dict, defaults: dict | None = None) -> dict:
    """A saved config with every key added to DEFAULTS since it was saved, at its default, nested sections
    included (aug.vflip): a new key's default keeps the behaviour the run was trained with."""
    defaults = DEFAULTS if defaults is None else defaults
    out = {**{k: copy.deepcopy(v) for k, v in defaults.items() if k not in saved}, **saved}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in FREE_FORM_KEYS:
            out[key] = with_new_keys(out[key], value)
    return out

