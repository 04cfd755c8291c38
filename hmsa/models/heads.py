"""The heads of section 3.1.

Semantic head: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv (num_classes).
Attention head: the same, ending in ONE channel (the sigmoid is applied by the fusion code).
Auxiliary head (HRNet-OCR): 1x1 conv -> BN -> ReLU -> 1x1 conv.
Joint scale attention (the explicit baseline, Chen et al. 2016, the paper's ref. [1]): the same head
on the features of EVERY scale concatenated, one output channel per scale (softmax across scales is
applied by the fusion code).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SegHead(nn.Sequential):
    """N×cin×h×w -> N×cout×h×w."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__(*conv_bn_relu(cin, mid, 3), *conv_bn_relu(mid, mid, 3), nn.Conv2d(mid, cout, 1))


def attention_head(cin: int, mid: int) -> SegHead:
    """Structurally identical to the semantic head, one output channel (section 3.1)."""
    return SegHead(cin, mid, 1)


class AuxHead(nn.Sequential):
    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__(*conv_bn_relu(cin, mid, 1), nn.Conv2d(mid, cout, 1))


class JointScaleAttention(nn.Module):
    """Chen et al.'s "attention to scale": one weight map per scale, all predicted together from the
    features of every scale (so each scale's weight depends on what every other scale sees).

    ``scales`` is the fixed, sorted scale set the model is trained and evaluated with (the cost the
    paper's section 3 compares: explicit training needs every inference scale)."""

    def __init__(self, cin: int, mid: int, scales: tuple[float, ...]) -> None:
        super().__init__()
        self.scales = tuple(sorted(float(s) for s in scales))
        self.net = SegHead(cin * len(self.scales), mid, len(self.scales))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """S × N×C×h×w (one per scale, ascending, all resized to one size) -> N×S×h×w logits."""
        if len(feats) != len(self.scales):
            raise ValueError(f"joint scale attention built for scales {self.scales}, got {len(feats)} inputs")
        return self.net(torch.cat(feats, dim=1))
