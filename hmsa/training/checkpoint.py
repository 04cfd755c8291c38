"""Checkpoints written atomically and loadable with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hmsa.io import atomic_write


def save(state: dict[str, Any], path: Path) -> None:
    """Temp file + fsync + rename: a job killed mid-write leaves the previous checkpoint intact."""

    def write(tmp: Path) -> None:
        # A file object, not a path: torch then reports a full disk as OSError 28 (with a path it
        # raises an opaque "unexpected pos" RuntimeError).
        with open(tmp, "wb") as fh:
            torch.save(state, fh)

    atomic_write(Path(path), write)


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        what = " ".join(str(exc).split())[:200]  # one line, and not torch's page of advice
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {what})") from exc


def last_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def load_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A final-model file (``results/<stage>/model.pt``): the weights and the checked metadata to rebuild
    it (``hmsa.model_file``)."""
    from hmsa import model_file

    return model_file.read(Path(path))


def load_matching(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor whose name and shape match; return the names skipped.

    Used to initialise Cityscapes training from the Mapillary model: the trunk and OCR transfer,
    the 65-class output layers (and a missing attention head) do not.
    """
    own = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
