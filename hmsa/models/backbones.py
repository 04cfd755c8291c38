"""Trunks from timm (section 3.1): HRNetV2 (four raw branches, ``feature_location=''``) and ResNet at
output stride 8. Pretrained ImageNet weights come through timm when asked for, or from a local file
(``weights=``) on machines without network; both are off by default."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class TimmTrunk(nn.Module):
    """A ``features_only`` timm model returning a list of feature maps (N×C_i×H/r_i×W/r_i)."""

    def __init__(self, name: str, out_indices: tuple[int, ...], pretrained: bool = False,
                 weights: str | None = None, **kwargs: object) -> None:
        super().__init__()
        import timm

        extra: dict = dict(kwargs)
        if weights:
            # timm reads the checkpoint from this file instead of downloading it; its own errors for a
            # missing or foreign file are empty or pages long, hence the checks and the one line here.
            if not Path(weights).is_file():
                raise FileNotFoundError(f"{weights}: trunk weights file (model.weights) not found")
            extra["pretrained_cfg_overlay"] = {"file": str(weights)}
        try:
            self.body = timm.create_model(name, features_only=True, out_indices=out_indices,
                                          pretrained=bool(pretrained or weights), **extra)
        except (RuntimeError, KeyError, ValueError, EOFError) as exc:
            if not weights:
                raise
            from hmsa.errors import BadInputError
            from hmsa.io import brief

            raise BadInputError(f"{weights}: not {name} trunk weights (model.weights): {brief(exc)}") from exc
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def hrnet_trunk(name: str, pretrained: bool = False, weights: str | None = None) -> TimmTrunk:
    """The four HRNet branches (e.g. W48: 48/96/192/384 ch at strides 4/8/16/32)."""
    return TimmTrunk(name, (1, 2, 3, 4), pretrained, weights, feature_location="")


def resnet_os8_trunk(name: str, pretrained: bool = False, weights: str | None = None) -> TimmTrunk:
    """Stride-4 low-level features and stride-8 dilated last stage (DeepLabV3+ at output stride 8)."""
    return TimmTrunk(name, (1, 4), pretrained, weights, output_stride=8)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad H and W up to a multiple (HRNet's fuse layers need sizes divisible by 32)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x


def upsample_crop(t: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling to the padded input size, then crop back to the original size."""
    t = F.interpolate(t, size=padded, mode="bilinear", align_corners=False)
    return t[..., : size[0], : size[1]]
