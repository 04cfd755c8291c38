"""Evaluation: confusion matrices, mIoU, per-class IoU, multi-scale inference settings."""
