"""Bad input on disk (issues #4, #5): one exception type whose message is ONE line naming the file.

``hmsa`` prints it as ``hmsa <cmd>: error: <path>: <what is wrong>`` and exits non-zero."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from hmsa.errors import HmsaError

T = TypeVar("T")


class DataError(HmsaError, ValueError):
    """A dataset, label or prediction file is unreadable or inconsistent. The message names the file."""

    def __init__(self, path: Path | str, what: str) -> None:
        # library messages (PIL, zlib) may span lines; the CLI promises one
        super().__init__(" ".join(f"{path}: {what}".split()))
        self.path, self.what = Path(path), what

    def __reduce__(self) -> tuple:
        # raised in worker processes too: pickle by the constructor's arguments
        return (type(self), (self.path, self.what))


class MissingDataError(DataError, FileNotFoundError):
    """A split folder, image or label that should exist does not."""


def read_file(path: Path, kind: str, read: Callable[[Path], T]) -> T:
    """``read(path)`` with any decoder failure turned into a one-line DataError naming the file."""
    try:
        return read(path)
    except FileNotFoundError as exc:
        raise MissingDataError(path, f"{kind} not found") from exc
    except Exception as exc:  # PIL/zlib raise many types (OSError, SyntaxError, ValueError...)
        raise DataError(path, f"unreadable {kind} ({type(exc).__name__}: {exc})") from exc


def open_image(path: Path) -> Image.Image:
    """A fully decoded RGB-able image (``Image.open`` is lazy: a truncated file fails only on load)."""

    def read(p: Path) -> Image.Image:
        img = Image.open(p)
        img.load()
        return img

    return read_file(Path(path), "image", read)


def open_label(path: Path, valid: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A single-channel uint8 label PNG whose values are all ``valid`` (bool[256]) and whose (W, H)
    is ``size`` (the image's) when given."""
    path = Path(path)
    arr = read_file(path, "label", lambda p: np.asarray(Image.open(p)))
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise DataError(path, f"label must be a single-channel 8-bit PNG, got shape {arr.shape} {arr.dtype}")
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        raise DataError(path, f"label size {arr.shape[1]}x{arr.shape[0]} differs from its image's "
                              f"{size[0]}x{size[1]} (WxH)")
    bad = ~valid[arr]
    if bad.any():
        ids = np.unique(arr[bad])
        raise DataError(path, f"label values {ids[:8].tolist()} are not ids of this dataset")
    return arr


def valid_ids(ids: range | list[int]) -> np.ndarray:
    """bool[256] with True at ``ids``."""
    out = np.zeros(256, bool)
    out[list(ids)] = True
    return out
