"""Confusion-matrix mIoU, accumulated over a whole dataset exactly like the official Cityscapes
evaluator (per-class IoU = TP / (TP + FP + FN) over all pixels; classes absent from both GT and
prediction are NaN and left out of the mean)."""

from __future__ import annotations

import numpy as np
import torch


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
              ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction."""
    keep = target != ignore_index
    t = target[keep].to(torch.int64)
    p = pred[keep].to(torch.int64)
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"label value {int(t.max())} outside 0..{num_classes - 1} (and not {ignore_index})")
    idx = t * num_classes + p.clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def summarize(conf: np.ndarray, class_names: list[str]) -> dict:
    """mIoU in [0, 1] (NaN classes excluded), per-class IoU (None when undefined), pixel accuracy."""
    iou = iou_per_class(conf)
    valid = ~np.isnan(iou)
    total = float(np.asarray(conf).sum())
    return {
        "miou": float(iou[valid].mean()) if valid.any() else 0.0,
        "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou, strict=True)},
        "pixel_accuracy": float(np.trace(conf) / total) if total else 0.0,
        "pixels": int(total),
    }
