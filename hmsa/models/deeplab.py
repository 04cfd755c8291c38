"""DeepLabV3+ with a ResNet trunk at output stride 8 (section 3.1, Table 1): ASPP on the stride-8
features, a decoder that adds stride-4 low-level features, and the semantic + attention heads of
section 3.1 on the decoder features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hmsa.models.backbones import pad_to_multiple, resnet_os8_trunk, upsample_crop
from hmsa.models.heads import JointScaleAttention, SegHead, attention_head, conv_bn_relu


class ASPP(nn.Module):
    """1x1 + three atrous 3x3 (rates doubled for output stride 8: 12/24/36) + image pooling."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (12, 24, 36)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(*conv_bn_relu(cin, cout, 1))] + [
            nn.Sequential(nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False), nn.BatchNorm2d(cout),
                          nn.ReLU(inplace=True)) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = nn.Sequential(*conv_bn_relu(cout * (len(rates) + 2), cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    def __init__(self, num_classes: int, trunk: str = "resnet50", aspp: int = 256, low: int = 48,
                 decoder: int = 256, head_mid: int = 256, attention: bool = True, pretrained: bool = False,
                 weights: str | None = None, explicit_scales: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.trunk = resnet_os8_trunk(trunk, pretrained, weights)
        c_low, c_high = self.trunk.channels
        self.aspp = ASPP(c_high, aspp)
        self.low_proj = nn.Sequential(*conv_bn_relu(c_low, low, 1))
        self.decoder = nn.Sequential(*conv_bn_relu(aspp + low, decoder, 3), *conv_bn_relu(decoder, decoder, 3))
        self.seg_head = SegHead(decoder, head_mid, num_classes)
        # attention=True: the hierarchical head (one sigmoid map per forward), or with explicit_scales
        # Chen et al.'s joint head, which reads the features of every scale at once (multiscale.py).
        explicit = attention and bool(explicit_scales)
        self.attn_head = attention_head(decoder, head_mid) if attention and not explicit else None
        self.scale_attn = JointScaleAttention(decoder, head_mid, tuple(explicit_scales or ())) if explicit else None
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        x = pad_to_multiple(x, 8)
        low, high = self.trunk(x)  # N×C_low×H/4×W/4, N×C_high×H/8×W/8
        a = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        dec = self.decoder(torch.cat([a, self.low_proj(low)], dim=1))  # N×decoder×H/4×W/4
        padded = x.shape[-2:]
        out = {"logits": upsample_crop(self.seg_head(dec), padded, size)}
        if self.attn_head is not None:
            out["attn_logit"] = upsample_crop(self.attn_head(dec), padded, size)
        # the head input on the unpadded region (stride 4), for the joint scale attention
        out["features"] = dec[..., : -(-size[0] // 4), : -(-size[1] // 4)]
        return out
