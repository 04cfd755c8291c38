"""Object-Contextual Representations (Yuan et al., the "OCR" of HRNet-OCR, section 3.1): soft object
regions from the auxiliary logits gather per-class context vectors; every pixel attends over them."""

from __future__ import annotations

import torch
from torch import nn

from hmsa.models.heads import conv_bn_relu


class SpatialGather(nn.Module):
    """feats N×C×H×W, region logits N×K×H×W -> object context N×C×K×1."""

    def forward(self, feats: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        n, c = feats.shape[:2]
        probs = torch.softmax(regions.flatten(2), dim=2)  # N×K×HW: each region a distribution over pixels
        context = probs @ feats.flatten(2).transpose(1, 2)  # N×K×C
        return context.transpose(1, 2).unsqueeze(3)


class ObjectAttention(nn.Module):
    """Pixel-to-object attention: N×C×H×W, N×C×K×1 -> N×C×H×W."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        ck = key_channels
        self.query = nn.Sequential(*conv_bn_relu(channels, ck, 1), *conv_bn_relu(ck, ck, 1))
        self.key = nn.Sequential(*conv_bn_relu(channels, ck, 1), *conv_bn_relu(ck, ck, 1))
        self.value = nn.Sequential(*conv_bn_relu(channels, key_channels, 1))
        self.up = nn.Sequential(*conv_bn_relu(key_channels, channels, 1))
        self.scale = key_channels ** -0.5

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # N×HW×Ck
        k = self.key(context).flatten(2)  # N×Ck×K
        v = self.value(context).flatten(2).transpose(1, 2)  # N×K×Ck
        sim = torch.softmax((q @ k) * self.scale, dim=-1)  # N×HW×K
        out = (sim @ v).transpose(1, 2).reshape(n, -1, h, w)
        return self.up(out)


class OCR(nn.Module):
    """Trunk features (N×cin×H×W) + auxiliary logits -> OCR features (N×cout×H×W)."""

    def __init__(self, cin: int, mid: int, key: int, cout: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(*conv_bn_relu(cin, mid, 3))
        self.gather = SpatialGather()
        self.attend = ObjectAttention(mid, key)
        self.fuse = nn.Sequential(*conv_bn_relu(2 * mid, cout, 1))

    def forward(self, feats: torch.Tensor, aux_logits: torch.Tensor) -> torch.Tensor:
        x = self.reduce(feats)
        context = self.gather(x, aux_logits)
        return self.fuse(torch.cat([self.attend(x, context), x], dim=1))
