"""Multi-scale fusion as plain functions (section 3).

Hierarchical (eq. 1), for a lower scale r_lo and the next higher r_hi:
    L = U(L_lo * α_lo) + (1 - U(α_lo)) * L_hi
chained over any sorted scale set: lower scales take precedence, so the model trained on the pair
{0.5, 1.0} predicts with {0.25, 0.5, 1.0, 2.0} without retraining. Explicit (Chen et al. 2016):
one attention map per scale, predicted JOINTLY from the features of every scale by the model's
``scale_attn`` head, softmax across scales; the scale set is fixed when the model is built. Avg / max
pooling: mean / max of per-scale logits. All inputs are keyed by scale and live at their own scale's
resolution; outputs are at scale 1.0's.

BatchNorm in multi-scale training: every forward in train mode would update the running statistics,
at every scale, so half (hierarchical) or two thirds (explicit) of the updates would come from inputs
at another scale than the one-scale evaluation forward sees; on small crops the 0.5 forward leaves
HRNet's deepest branch a few pixels wide and the statistics collapse. The authors' code does update
them at every scale. Ours (``bn_stats="scale_1"``, the default): forwards at other scales normalise
with their own batch statistics but leave running statistics untouched; only the 1.0 forward updates
them. ``bn_stats="every_scale"`` keeps the authors' behaviour.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from hmsa.errors import BadInputError

METHODS = ("single", "avgpool", "maxpool", "explicit", "hierarchical")
TRAIN_PAIR = (0.5, 1.0)
BN_STATS = ("scale_1", "every_scale")


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _check(logits: dict[float, torch.Tensor], attn: dict[float, torch.Tensor] | None = None) -> list[float]:
    if not logits:
        raise ValueError("multi-scale fusion needs at least one scale")
    if 1.0 not in logits:
        raise ValueError(f"scale 1.0 must be among the scales, got {sorted(logits)}")
    if attn is not None and set(attn) != set(logits):
        raise ValueError(f"attention scales {sorted(attn)} do not match logit scales {sorted(logits)}")
    return sorted(logits)


def fuse_hierarchical(logits: dict[float, torch.Tensor], attn: dict[float, torch.Tensor]) -> torch.Tensor:
    """Eq. 1 chained from the highest scale down; ``attn`` holds α = sigmoid(attention logit)."""
    scales = _check(logits, attn)
    pred = logits[scales[-1]]
    for s in reversed(scales[:-1]):
        lo, a = logits[s], attn[s]
        if s >= 1.0:
            pred = _resize(pred, lo.shape[-2:])
            pred = a * lo + (1 - a) * pred
        else:
            # attention applied at the low scale, then upsampled (eq. 1)
            size = pred.shape[-2:]
            pred = _resize(a * lo, size) + (1 - _resize(a, size)) * pred
    return pred


def fuse_explicit(logits: dict[float, torch.Tensor], attn_logits: dict[float, torch.Tensor]) -> torch.Tensor:
    scales = _check(logits, attn_logits)
    size = logits[1.0].shape[-2:]
    weights = torch.softmax(torch.stack([_resize(attn_logits[s], size) for s in scales]), dim=0)
    return sum(w * _resize(logits[s], size) for w, s in zip(weights, scales, strict=True))


def fuse_avg(logits: dict[float, torch.Tensor]) -> torch.Tensor:
    scales = _check(logits)
    size = logits[1.0].shape[-2:]
    return torch.stack([_resize(logits[s], size) for s in scales]).mean(0)


def fuse_max(logits: dict[float, torch.Tensor]) -> torch.Tensor:
    scales = _check(logits)
    size = logits[1.0].shape[-2:]
    return torch.stack([_resize(logits[s], size) for s in scales]).amax(0)


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm layers in train mode normalise with the batch's statistics as usual, but their
    running mean / var and batch counter stay as they are (also SyncBatchNorm; eval mode unaffected)."""
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False  # train mode + no tracking = batch statistics, no update
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def scaled(images: torch.Tensor, s: float) -> torch.Tensor:
    """The images as the forward at scale ``s`` sees them (bilinear resize; 1.0: unchanged)."""
    if s == 1.0:
        return images
    h, w = images.shape[-2:]
    return _resize(images, (max(1, round(h * s)), max(1, round(w * s))))


def _per_scale(model: nn.Module, images: torch.Tensor, scales: list[float],
               bn_stats: str = "every_scale") -> dict[float, dict]:
    """One forward per scale. ``bn_stats="scale_1"``: only the 1.0 forward may update BatchNorm's
    running statistics (no effect in eval mode)."""
    if bn_stats not in BN_STATS:
        raise ValueError(f"train.bn_stats: unknown value {bn_stats!r} (known: {BN_STATS})")
    outs = {}
    for s in scales:
        freeze = bn_stats == "scale_1" and s != 1.0 and model.training
        with frozen_running_stats(model) if freeze else contextlib.nullcontext():
            outs[s] = model(scaled(images, s))
    return outs


def explicit_attention(model: nn.Module, outs: dict[float, dict]) -> dict[float, torch.Tensor]:
    """Chen et al.'s weights: the model's joint head on every scale's features (resized to the 1.0
    scale's), one attention logit map per scale (N×1×h×w at the 1.0 feature resolution)."""
    head = getattr(model, "scale_attn", None)
    scales = tuple(sorted(outs))
    if head is None:
        raise BadInputError("method 'explicit' needs a model trained with train.method=explicit "
                         "(Chen et al.'s joint scale attention)")
    if head.scales != scales:
        raise BadInputError(f"this explicit-attention model was trained on scales {list(head.scales)}; "
                         f"it cannot weigh {list(scales)} (Chen et al.'s scale set is fixed)")
    size = outs[1.0]["features"].shape[-2:]
    logits = head([_resize(outs[s]["features"], size) for s in scales])  # N×S×h×w
    return {s: logits[:, i : i + 1] for i, s in enumerate(scales)}


def _needs_attention(outs: dict[float, dict], method: str) -> None:
    if method == "hierarchical" and any("attn_logit" not in o for o in outs.values()):
        raise BadInputError("method 'hierarchical' needs a model built with attention=True "
                         "(and trained with the hierarchical head)")


def _fuse(model: nn.Module, outs: dict[float, dict], method: str) -> torch.Tensor:
    logits = {s: o["logits"] for s, o in outs.items()}
    _needs_attention(outs, method)
    if method == "hierarchical":
        return fuse_hierarchical(logits, {s: torch.sigmoid(o["attn_logit"]) for s, o in outs.items()})
    if method == "explicit":
        return fuse_explicit(logits, explicit_attention(model, outs))
    if method == "maxpool":
        return fuse_max(logits)
    if method in ("avgpool", "single"):
        return fuse_avg(logits)
    raise ValueError(f"unknown fusion method {method!r} (known: {METHODS})")


def _scales_for(method: str, scales: list[float]) -> list[float]:
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r} (known: {METHODS})")
    return [1.0] if method == "single" else sorted(float(s) for s in scales)


def require_finite(logits: torch.Tensor, model_path: object, image: str, setting: str) -> torch.Tensor:
    """``logits`` unchanged, or a one-line error: a model whose weights ran away from its BatchNorm
    running statistics (diverged, or trained far too briefly) overflows in eval mode, and NaN logits
    would otherwise pass as class 0 everywhere (evaluation) or as "not sure" everywhere (auto-labels)."""
    if not bool(torch.isfinite(logits).all()):
        raise BadInputError(f"{model_path}: non-finite logits on image {image} ({setting}): the model has "
                            "diverged, or its BatchNorm statistics do not match its weights")
    return logits


def predict_multiscale(model: nn.Module, images: torch.Tensor, scales: list[float], method: str,
                       flip: bool = False) -> torch.Tensor:
    """N×C×H×W logits at the input resolution; with ``flip`` the mirrored prediction is averaged in."""
    scales = _scales_for(method, scales)
    out = _resize(_fuse(model, _per_scale(model, images, scales), method), images.shape[-2:])
    if flip:
        mirrored = _fuse(model, _per_scale(model, images.flip(-1), scales), method)
        out = (out + _resize(mirrored, images.shape[-2:]).flip(-1)) / 2
    return out


def predict_multiscale_with_maps(model: nn.Module, images: torch.Tensor, scales: list[float],
                                 method: str) -> tuple[torch.Tensor, dict[float, dict[str, torch.Tensor]]]:
    """Fused logits plus, per scale, its logits and attention (α, or the explicit softmax weight)
    at the input resolution — the material of Figure 3."""
    scales = _scales_for(method, scales)
    outs = _per_scale(model, images, scales)
    fused = _resize(_fuse(model, outs, method), images.shape[-2:])
    size = images.shape[-2:]
    maps: dict[float, dict[str, torch.Tensor]] = {s: {"logits": _resize(o["logits"], size)} for s, o in outs.items()}
    if method == "hierarchical":
        for s, o in outs.items():
            maps[s]["attn"] = _resize(torch.sigmoid(o["attn_logit"]), size)
    elif method == "explicit":
        attn = explicit_attention(model, outs)
        w = torch.softmax(torch.stack([_resize(attn[s], size) for s in scales]), dim=0)
        for s, ws in zip(scales, w, strict=True):
            maps[s]["attn"] = ws
    return fused, maps


def forward_train(model: nn.Module, images: torch.Tensor, method: str, scales: list[float],
                  bn_stats: str = "scale_1") -> dict:
    """What the loss needs: fused and auxiliary logits, N×C×H×W at the input resolution, and the
    per-scale logits at their own scale's resolution (the loss resizes them only when it supervises
    them: upsampling the 0.5 scale's 19-channel logits, forward and backward, was ~4 % of a
    hierarchical step of the embedded teacher, for a loss term it has weight 0).
    Hierarchical trains on the pair {0.5, 1.0} only (section 3); ``bn_stats``: see the module
    docstring."""
    if method in ("single", "avgpool"):
        out = model(images)
        return {"fused": out["logits"], "per_scale": {1.0: out["logits"]}, "aux": out.get("aux")}
    if method == "hierarchical" and tuple(sorted(scales)) != TRAIN_PAIR:
        raise ValueError(f"hierarchical training uses the scale pair {TRAIN_PAIR}, got {sorted(scales)}")
    if method not in ("hierarchical", "explicit"):
        raise ValueError(f"unknown training method {method!r}")
    scales = sorted(float(s) for s in scales)
    if 1.0 not in scales:
        raise ValueError(f"multi-scale training needs the 1.0 scale among its scales, got {scales}")
    outs = _per_scale(model, images, scales, bn_stats)
    size = images.shape[-2:]
    return {"fused": _resize(_fuse(model, outs, method), size),
            "per_scale": {s: o["logits"] for s, o in outs.items()},
            "aux": _resize(outs[1.0]["aux"], size) if "aux" in outs[1.0] else None}
