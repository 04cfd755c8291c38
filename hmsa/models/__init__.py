"""The paper's models (section 3.1) and a plain dict registry."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from hmsa.models.deeplab import DeepLabV3Plus
from hmsa.models.hrnet_ocr import HRNetOCR

MODELS: dict[str, Callable[..., nn.Module]] = {
    # HRNetV2-W48 + OCR (Tables 2-4).
    "hrnet_ocr": partial(HRNetOCR, trunk="hrnet_w48", ocr_mid=512, ocr_key=256, head_mid=256),
    # CPU stand-in: the same architecture on hrnet_w18_small with narrow OCR / heads.
    "hrnet_ocr_tiny": partial(HRNetOCR, trunk="hrnet_w18_small", ocr_mid=64, ocr_key=32, head_mid=32),
    # DeepLabV3+ ResNet-50, output stride 8 (Table 1).
    "deeplabv3plus_r50": partial(DeepLabV3Plus, trunk="resnet50", aspp=256, low=48, decoder=256, head_mid=256),
    "deeplabv3plus_tiny": partial(DeepLabV3Plus, trunk="resnet18", aspp=64, low=16, decoder=64, head_mid=32),
}


def build_model(name: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                **kwargs: object) -> nn.Module:
    """``weights``: a local file of ImageNet trunk weights (used instead of a download)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name](num_classes=num_classes, pretrained=pretrained, weights=weights, **kwargs)
