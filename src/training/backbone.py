"""Backbones for every model: a timm model with its first convolution fitted to the input channels, from
random initialisation, timm's pretrained weights or a local weights file."""
from __future__ import annotations

import timm
from torch import nn

from ..core.config import ConfigError, pretrained_file
from ..core.progress import first_line, log


def create_backbone(name: str, pretrained: bool | str | None, in_chans: int, stem_pool: bool = True,
                    **kwargs) -> nn.Module:
    """A timm model (kwargs e.g. num_classes=0 or features_only=True), with its first convolution taking
    `in_chans` channels. pretrained: None/False = random initialisation; True = timm's pretrained weights for
    the backbone (downloaded once into the Hugging Face cache; HF_HUB_OFFLINE=1 then reads the cache); a path =
    a local state-dict file, or a folder holding <backbone>.pth. timm adapts the first convolution's RGB
    weights to `in_chans` and drops the ImageNet classifier; one log line says which weights loaded.
    stem_pool=False drops a ResNet's stem max-pool (every stage then sees twice the resolution; the weights
    are the same, so pretrained ones still load)."""
    model = _create(name, pretrained, in_chans, **kwargs)
    if not stem_pool:
        if not isinstance(getattr(model, "maxpool", None), nn.Module):
            raise ConfigError(f"stem_pool: false: backbone '{name}' has no stem max-pool (a timm ResNet has)")
        model.maxpool = nn.Identity()
    return model


def _create(name: str, pretrained: bool | str | None, in_chans: int, **kwargs) -> nn.Module:
    if not pretrained:
        return timm.create_model(name, pretrained=False, in_chans=in_chans, **kwargs)
    extra, source = {}, "timm's pretrained weights"
    if pretrained is not True:
        path = pretrained_file(pretrained, name)
        if not path.is_file():
            raise ConfigError(f"pretrained: {path}: no such weights file for backbone '{name}'")
        extra, source = {"pretrained_cfg_overlay": dict(file=str(path))}, f"{path}"
    try:
        model = timm.create_model(name, pretrained=True, in_chans=in_chans, **extra, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:  # no such weights, no network and no cache, shapes that differ
        hint = "; without internet, fetch_weights.py saves them as files where there is some" if pretrained is True else ""
        raise ConfigError(f"pretrained: backbone '{name}': {source} do not load ({first_line(err)}){hint}") from None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if pretrained is True:
        source += f" {cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('tag', '')}".rstrip()
    log(f"{name}: loaded {source}; {_first_conv_note(cfg, in_chans)}")
    return model


def _first_conv_note(cfg: dict, in_chans: int) -> str:
    """How timm's adapt_input_conv turned the pretrained RGB first convolution into `in_chans` channels."""
    conv, rgb = cfg.get("first_conv", "the first convolution"), (cfg.get("input_size") or (3,))[0]
    if in_chans == rgb:
        return f"first convolution {conv} unchanged ({rgb} channels)"
    how = "summed over RGB" if in_chans == 1 else f"RGB repeated and scaled by {rgb}/{in_chans}"
    return f"first convolution {conv} adapted from {rgb} to {in_chans} input channels ({how})"
