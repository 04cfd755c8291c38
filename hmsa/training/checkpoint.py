"""Checkpoints written atomically and loadable with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from hmsa.errors import BadInputError
from hmsa.io import atomic_write, brief


def save(state: dict[str, Any], path: Path) -> None:
    """Temp file + fsync + rename: a job killed mid-write leaves the previous checkpoint intact."""

    def write(tmp: Path) -> None:
        # A file object, not a path: torch then sees the OSError of a full disk (with a path its C++
        # writer fails alone, as an opaque "unexpected pos" RuntimeError).
        try:
            with open(tmp, "wb") as fh:
                torch.save(state, fh)
        except RuntimeError as exc:
            raise _write_error(exc, tmp) from exc

    atomic_write(Path(path), write)


def _write_error(exc: RuntimeError, tmp: Path) -> BaseException:
    """The OSError behind torch's RuntimeError of a failed write (it may hide it as the context),
    else the RuntimeError itself; ``atomic_write`` names the checkpoint in the message."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            return OSError(cause.errno, os.strerror(cause.errno))
        cause = cause.__cause__ or cause.__context__
    if "unexpected pos" in str(exc):  # the write stopped short, and torch kept no reason
        full = shutil.disk_usage(tmp.parent).free < (1 << 20)
        code = errno.ENOSPC if full else errno.EIO
        return OSError(code, os.strerror(code))
    return exc


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint / model file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise BadInputError(f"{path}: not a readable checkpoint ({brief(exc)})") from exc


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
