"""One default config; models, presets, config files and `--key value` flags are small overrides of it.

Resolution order: DEFAULTS <- MODEL_DEFAULTS[model] <- PRESETS[preset] <- --config FILE <- --key value.
Nested keys use dots on the command line: `--crop.size_px 96`. Values are parsed as YAML (`--lr 3e-4`,
`--amp none`, `--model_kwargs "{channels: [16, 32, 64, 128]}"`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .atomic import write_text
from .constants import SAMPLE_WEIGHTS
from .parallel import default_workers
from .paths import SYNTH_DIR, dataset_name, folds_file_for, portable as portable_path, runs_dir_for

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
            # hedge them all, as on --variety real); off by default: at 8 epochs it cost precision on the
            # default set (docs/BENCHMARKS.md).
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
    # One heatmap model per series type; `train.py --model localizer` trains one for each.
    "localizer": {"task": "localizer", "backbone": "resnet18", "batch_size": 16, "epochs": 20, "patience": 6},
}

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


def parse_overrides(pairs: list[str]) -> dict:
    """['--lr', '3e-4', '--crop.size_px', '96'] -> {'lr': 0.0003, 'crop': {'size_px': 96}}."""
    out: dict = {}
    i = 0
    while i < len(pairs):
        key = pairs[i]
        if not key.startswith("--") or i + 1 >= len(pairs):
            raise ConfigError(f"command line: expected '--key value' pairs, got {pairs[i:]!r}")
        value = yaml.safe_load(pairs[i + 1])
        node = out
        parts = key[2:].replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        i += 2
    return out


def _check_keys(override: dict, base: dict, where: str, prefix: str = "") -> None:
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown config key '{prefix}{key}'")
        if isinstance(value, dict) and isinstance(base[key], dict) and key not in ("model_kwargs", "size_mm"):
            _check_keys(value, base[key], where, f"{prefix}{key}.")


def resolve(model: str | None = None, preset: str | None = None, config_file: str | Path | None = None,
            overrides: dict | None = None) -> dict:
    """The full config of one run."""
    overrides = overrides or {}
    file_cfg = yaml.safe_load(Path(config_file).read_text()) or {} if config_file else {}
    model = model or overrides.get("model") or file_cfg.get("model") or DEFAULTS["model"]
    if model not in MODEL_DEFAULTS:
        raise ConfigError(f"unknown model '{model}'; known: {sorted(MODEL_DEFAULTS)}")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; known: {sorted(PRESETS)}")
    cfg = merge(DEFAULTS, MODEL_DEFAULTS[model])
    if preset:
        cfg = merge(cfg, PRESETS[preset])
    _check_keys(file_cfg, DEFAULTS, str(config_file))
    _check_keys(overrides, DEFAULTS, "command line")
    cfg = merge(merge(cfg, file_cfg), overrides)
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


# Config keys that hold paths: saved relative to the repository (portable), never as this machine's absolute paths.
PATH_KEYS = ("data_dir", "cache_dir", "folds", "runs", "coords", "pretrained")


def portable(cfg: dict) -> dict:
    """The config as it is saved: its paths relative to the repository (paths.portable)."""
    return {k: portable_path(v) if k in PATH_KEYS and v not in (None, "") else v for k, v in cfg.items()}


def save(cfg: dict, path: Path) -> None:
    """A resolved config as YAML (atomically), its paths portable."""
    write_text(yaml.safe_dump(portable(cfg), sort_keys=False), path)


def load(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())
