"""SGD with the "poly" learning-rate policy, stepped per iteration (section 5.1)."""

from __future__ import annotations

import torch


def build_sgd(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def poly_lr(base_lr: float, iteration: int, total: int, power: float, warmup: int = 0) -> float:
    """lr = base * (1 - it/total)^power, with an optional linear warm-up over the first iterations."""
    if warmup > 0 and iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    return base_lr * (1.0 - iteration / total) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
