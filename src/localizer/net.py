"""The localizer's network: a timm encoder and a small U-Net decoder giving one heatmap per point channel."""
from __future__ import annotations

import torch
from torch import nn

from ..core.registry import register_model
from ..training.backbone import create_backbone
from . import plan


class HeatmapNet(nn.Module):
    """Keypoint heatmaps: a timm encoder (features_only) and a small U-Net decoder to stride 2."""

    def __init__(self, backbone: str = "resnet18", in_chans: int = 3, out_channels: int = 5, pretrained: bool | str | None = None,
                 model_kwargs: dict | None = None, decoder_channels: int = 64):
        super().__init__()
        self.encoder = create_backbone(backbone, pretrained, in_chans, features_only=True, **(model_kwargs or {}))
        chans = self.encoder.feature_info.channels()
        if self.encoder.feature_info.reduction()[0] != 2:
            raise ValueError(f"backbone '{backbone}' has no stride-2 feature map")
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in chans)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False),
                          nn.BatchNorm2d(decoder_channels), nn.ReLU(inplace=True))
            for _ in chans[:-1]
        )
        self.out = nn.Conv2d(decoder_channels, out_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(image)
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):  # coarse to fine, adding each skip
            x = nn.functional.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.blocks[i](x + self.lateral[i](feats[i]))
        return self.out(x)


@register_model("localizer", task="localizer", member=False,
                defaults={"backbone": "resnet18", "batch_size": 16, "epochs": 20, "patience": 6})
def localizer(cfg: dict) -> nn.Module:
    """One heatmap model per series type (its plan's channels); `train.py --model localizer` trains each."""
    channels = plan.part(cfg["series_type"]).channels
    return HeatmapNet(cfg["backbone"], 3, channels, cfg["pretrained"], cfg["model_kwargs"],
                      cfg["loc"]["decoder_channels"])
