"""The heads of section 3.1.

Semantic head: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv (num_classes).
Attention head: the same, ending in ONE channel (the sigmoid is applied by the fusion code).
Auxiliary head (HRNet-OCR): 1x1 conv -> BN -> ReLU -> 1x1 conv.
"""

from __future__ import annotations

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
