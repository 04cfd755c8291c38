"""The paper's models (section 3.1) and a plain dict registry."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from hmsa.errors import BadInputError, UnknownNameError
from hmsa.models import cpu_trunks
from hmsa.models.cpu_trunks import HRNET_CPU, RESNET_CPU
from hmsa.models.deeplab import DeepLabV3Plus
from hmsa.models.hrnet_ocr import HRNetOCR


class _CpuSized:
    """A registry entry for a CPU-sized model (trunks in ``cpu_trunks.py``): no pretrained weights
    exist for it, so asking for them is an error, not a silent random init. (A class, not a closure,
    so the registry stays picklable like the ``partial`` entries.)"""

    def __init__(self, name: str, cls: Callable[..., nn.Module], **widths: object) -> None:
        self.name, self.cls, self.widths = name, cls, widths

    def __call__(self, num_classes: int, pretrained: bool = False, weights: str | None = None,
                 **kwargs: object) -> nn.Module:
        if pretrained or weights:
            raise BadInputError(f"model {self.name!r} has no pretrained trunk weights: set model.pretrained=false "
                             "and model.weights='' (pretrained trunks: hrnet_ocr, deeplabv3plus_r50)")
        cpu_trunks.register()  # their trunks are timm models of our own (imports timm, as the trunks do)
        return self.cls(num_classes=num_classes, **self.widths, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    # HRNetV2-W48 + OCR (Tables 2-4).
    "hrnet_ocr": partial(HRNetOCR, trunk="hrnet_w48", ocr_mid=512, ocr_key=256, head_mid=256),
    # CPU-sized HRNetV2 + OCR: four branches (8/16/32/64 ch at strides 4/8/16/32) with their fusion,
    # one block per branch; narrow OCR / heads. No pretrained weights.
    "hrnet_ocr_tiny": _CpuSized("hrnet_ocr_tiny", HRNetOCR, trunk=HRNET_CPU, ocr_mid=32, ocr_key=16, head_mid=16),
    # DeepLabV3+ ResNet-50, output stride 8 (Table 1).
    "deeplabv3plus_r50": partial(DeepLabV3Plus, trunk="resnet50", aspp=256, low=48, decoder=256, head_mid=256),
    # CPU-sized DeepLabV3+: BasicBlock ResNet [1,1,1,1] (16/32/64/128 ch) at output stride 8, narrow
    # ASPP / decoder / heads. No pretrained weights.
    "deeplabv3plus_tiny": _CpuSized("deeplabv3plus_tiny", DeepLabV3Plus, trunk=RESNET_CPU, aspp=48, low=16,
                                     decoder=48, head_mid=24),
}


def build_model(name: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                **kwargs: object) -> nn.Module:
    """``weights``: a local file of ImageNet trunk weights (used instead of a download)."""
    if name not in MODELS:
        raise UnknownNameError(f"model.name: unknown model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name](num_classes=num_classes, pretrained=pretrained, weights=weights, **kwargs)
