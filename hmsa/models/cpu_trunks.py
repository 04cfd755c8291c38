"""CPU-sized trunks for the embedded pipeline: the paper's two architectures, narrow and shallow.

What: two timm models, registered in timm's model registry under their own names so that the
unchanged ``TimmTrunk`` (``hmsa/models/backbones.py``) builds them with ``timm.create_model`` like
any other trunk (``features_only=True``; ``.channels``, ``.reductions``, a list of feature maps):

- ``hmsa_hrnet_cpu``: timm's own ``HighResolutionNet`` / ``HighResolutionNetFeatures`` with a small
  stage config (:data:`HRNET_CPU_CFG`). It keeps HRNetV2's structure: a stride-4 stem, stage 1, then
  stages 2-4 adding one branch each, four parallel branches at strides 4/8/16/32 in the end, and the
  multi-resolution fusion (every branch summed into every other, up- or down-sampled) after each
  module. Only the widths (stem 16; branches 8/16/32/64) and the depths (one block per branch, one
  module per stage) shrink. timm's stem always ends at 64 channels (``conv2``), so stage 1's
  bottleneck reads 64 channels whatever ``stem_width`` is.
- ``hmsa_resnet_cpu``: timm's own ``ResNet`` with BasicBlocks, one block per stage, stage widths
  16/32/64/128 and a narrow deep stem (three 3x3 convs 8/8/16 instead of the 7x7 64-ch conv). At
  ``output_stride=8`` (what ``resnet_os8_trunk`` asks for) layer3 and layer4 are dilated (2, 4)
  instead of strided, as in DeepLabV3+ at output stride 8: low-level features at stride 4 (16 ch),
  high-level at stride 8 (128 ch).

Why: the registry's former "tiny" models were built on hrnet_w18_small (1.75 M parameters with OCR,
6.9 GFLOPs per hierarchical training step at batch 4, 64x128) and ResNet-18 (DeepLabV3+ 12.3 M, 50
GFLOPs), too slow for the embedded pipeline, which trains ~9 stages of a few hundred iterations in
~10 minutes on a laptop CPU. With these trunks the models have 0.30 M (1.5 GFLOPs) and 0.58 M (3.2
GFLOPs) parameters, and that step takes ~0.1 s on one core of the development VM (2-4x less than the
former ones; small convolutions are bound by per-operator overhead, not FLOPs, below that).
``benchmarks/tiny_models.py`` measures it (``reports/benchmarks/tiny_models.json``).

They have no pretrained weights: asking for them (``pretrained=True`` or a weights file) raises a
ValueError. :func:`register` adds both names to timm's registry (idempotent); the ``hmsa.models``
registry entries call it before building, so importing ``hmsa.models`` still does not import timm
(which takes seconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hmsa.errors import BadInputError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["HRNET_CPU", "HRNET_CPU_CFG", "RESNET_CPU", "RESNET_CPU_ARGS", "register"]

HRNET_CPU = "hmsa_hrnet_cpu"
RESNET_CPU = "hmsa_resnet_cpu"


def _stage(branches: int, widths: tuple[int, ...]) -> dict[str, Any]:
    """One HRNet module of BasicBlocks, one block per branch, ending in the SUM fusion."""
    return dict(num_modules=1, num_branches=branches, block_type="BASIC", num_blocks=(1,) * branches,
                num_channels=widths[:branches], fuse_method="SUM")


#: HRNetV2 at CPU size, in the format of timm's ``cfg_cls`` (``timm/models/hrnet.py``); hrnet_w18_small
#: for comparison: stem 64, stage 1 one bottleneck of 32 (x4), branches 16/32/64/128, 2 blocks each.
HRNET_CPU_WIDTHS = (8, 16, 32, 64)
HRNET_CPU_CFG: dict[str, Any] = dict(
    stem_width=16,
    stage1=dict(num_modules=1, num_branches=1, block_type="BOTTLENECK", num_blocks=(1,), num_channels=(8,),
                fuse_method="SUM"),  # one bottleneck: 8 * 4 = 32 channels out
    stage2=_stage(2, HRNET_CPU_WIDTHS),
    stage3=_stage(3, HRNET_CPU_WIDTHS),
    stage4=_stage(4, HRNET_CPU_WIDTHS),
)

#: ResNet at CPU size: arguments of timm's ``ResNet`` (block: BasicBlock). ResNet-18 for comparison:
#: layers 2/2/2/2, channels 64/128/256/512, one 7x7 stem conv of 64.
RESNET_CPU_ARGS: dict[str, Any] = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_type="deep",
                                       stem_width=8)

_PRETRAINED_CFG = dict(num_classes=1000, input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), first_conv="conv1", license="apache-2.0")


def _no_weights(name: str, pretrained: bool, kwargs: dict[str, Any]) -> None:
    """Refuse pretrained weights (timm would otherwise warn and keep the random init)."""
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    kwargs.pop("pretrained_cfg", None)  # none to load; ours describes the inputs
    if pretrained or overlay.get("file"):
        raise BadInputError(f"{name} is a CPU-sized trunk without pretrained weights "
                            "(use model.pretrained=false, no model.weights)")


def hmsa_hrnet_cpu(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """HRNetV2 at CPU size (:data:`HRNET_CPU_CFG`). With ``features_only=True`` it is timm's
    ``HighResolutionNetFeatures`` (``feature_location=''``: the four raw branches)."""
    from timm.models._builder import build_model_with_cfg, pretrained_cfg_for_features
    from timm.models.hrnet import HighResolutionNet, HighResolutionNetFeatures

    _no_weights(HRNET_CPU, pretrained, kwargs)
    features = kwargs.pop("features_only", False)
    model = build_model_with_cfg(
        HighResolutionNetFeatures if features else HighResolutionNet, HRNET_CPU, False,
        pretrained_cfg=dict(_PRETRAINED_CFG, classifier="classifier"), model_cfg=HRNET_CPU_CFG,
        kwargs_filter=("num_classes", "global_pool") if features else None, **kwargs)
    if features:  # as timm's _create_hrnet does for its feature class
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return model


def hmsa_resnet_cpu(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet at CPU size (:data:`RESNET_CPU_ARGS`); ``output_stride=8`` dilates layer3 and layer4."""
    from timm.models._builder import build_model_with_cfg
    from timm.models.resnet import BasicBlock, ResNet

    _no_weights(RESNET_CPU, pretrained, kwargs)
    return build_model_with_cfg(ResNet, RESNET_CPU, False, pretrained_cfg=dict(_PRETRAINED_CFG, classifier="fc"),
                                **{"block": BasicBlock, **RESNET_CPU_ARGS, **kwargs})


def register() -> None:
    """Add ``hmsa_hrnet_cpu`` and ``hmsa_resnet_cpu`` to timm's model registry (once per process)."""
    import timm
    from timm.models import register_model

    for fn in (hmsa_hrnet_cpu, hmsa_resnet_cpu):
        if not timm.is_model(fn.__name__):
            register_model(fn)
