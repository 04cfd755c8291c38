"""Loss terms of section 5.1 computed outside the model: main loss on the fused output, auxiliary
cross-entropy (weight 0.4) and optional per-scale supervision (paper: weight 0.05)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels; 0 (with a graph, so backward works) when a batch has
    none. PyTorch's mean over zero pixels is NaN, and a batch without a labelled pixel is ordinary: a
    crop of a coarse image's unlabelled border, or of an auto-label where the teacher was never sure."""
    total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)


def main_loss(kind: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "cross_entropy":
        return cross_entropy(logits, target)
    if kind == "rmi":
        from hmsa.training.rmi import rmi_loss

        return rmi_loss(logits, target, ignore_index=IGNORE_INDEX)
    raise ValueError(f"train.loss: unknown loss {kind!r}")


def total_loss(out: dict, target: torch.Tensor, kind: str, aux_weight: float,
               scale_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``out`` is what ``hmsa.models.multiscale.forward_train`` returns (fused and auxiliary logits at
    the input resolution, per-scale logits at their own, upsampled here when supervised)."""
    loss = main_loss(kind, out["fused"], target)
    terms = {"loss/main": float(loss.detach())}
    if out.get("aux") is not None and aux_weight > 0:
        aux = cross_entropy(out["aux"], target)
        loss = loss + aux_weight * aux
        terms["loss/aux"] = float(aux.detach())
    if scale_weight > 0 and len(out.get("per_scale") or {}) > 1:
        for scale, logits in out["per_scale"].items():
            if tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
                logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
            term = cross_entropy(logits, target)
            loss = loss + scale_weight * term
            terms[f"loss/scale_{scale:g}"] = float(term.detach())
    terms["loss/total"] = float(loss.detach())
    return loss, terms
