"""Mixed precision and SyncBatchNorm (section 5.1: "mixed precision ... SyncBN"), CUDA only.

Both are config switches (``train.amp``, ``train.sync_bn``). On CPU they are a logged no-op: autocast
to float16 is a GPU feature, and torch's SyncBatchNorm refuses CPU tensors in its forward.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger("hmsa.train")


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Every ``BatchNorm*d`` becomes an ``nn.SyncBatchNorm`` sharing the same parameters and buffers
    (state-dict keys do not change, so checkpoints stay interchangeable with the plain model)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def maybe_sync_bn(model: nn.Module, enabled: bool, device: torch.device, world_size: int) -> tuple[nn.Module, bool]:
    """Convert to SyncBN when asked for and useful (CUDA, more than one process); says whether it did."""
    if not enabled:
        return model, False
    if device.type != "cuda" or world_size < 2:
        log.warning("train.sync_bn: no-op (%s, %d process%s): plain BatchNorm", device.type, world_size,
                    "" if world_size == 1 else "es")
        return model, False
    return convert_sync_bn(model), True


@dataclass
class Precision:
    """The autocast context and the gradient scaler of one run (both inert when ``active`` is False)."""

    active: bool
    device_type: str
    scaler: torch.amp.GradScaler

    def autocast(self) -> Any:
        if not self.active:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.float16)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Scaled backward + step (skipped by the scaler when gradients overflowed) + scale update."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()  # {} when disabled

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A checkpoint written without AMP (e.g. on CPU) holds {}: the scaler then starts fresh.
        if self.active and state:
            self.scaler.load_state_dict(state)


def build_precision(enabled: bool, device: torch.device) -> Precision:
    """Mixed precision when asked for and on CUDA; a logged no-op otherwise."""
    active = enabled and device.type == "cuda"
    if enabled and not active:
        log.warning("train.amp: no-op on %s: training in float32", device.type)
    return Precision(active, device.type, torch.amp.GradScaler(device.type, enabled=active))
