"""Checkpoints written atomically and loadable with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hmsa.errors import BadInputError
from hmsa.io import atomic_write


def save(state: dict[str, Any], path: Path) -> None:
    """Temp file + fsync + rename: a job killed mid-write leaves the previous checkpoint intact."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise BadInputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc


def last_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def load_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A final-model file (``results/<stage>/model.pt``): the weights and the metadata to rebuild it."""
    state = load(path)
    if "model" not in state or "meta" not in state:
        raise BadInputError(f"{path}: not an hmsa model file (needs 'model' and 'meta')")
    return state["model"], state["meta"]


def load_matching(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor whose name and shape match; return the names skipped.

    Used to initialise Cityscapes training from the Mapillary model: the trunk and OCR transfer,
    the 65-class output layers (and a missing attention head) do not.
    """
    own = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
