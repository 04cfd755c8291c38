"""Figures: colourised label maps and the per-scale prediction / attention grid of Figure 3."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hmsa.io import atomic_write

_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])
TILE_KEY = "hmsa.tile"  # PNG text chunk: "HxW" of one tile of a grid


@functools.lru_cache(maxsize=4)
def palette(dataset: str) -> np.ndarray:
    """(256, 3) uint8; Cityscapes uses the official trainId colours, 255 (ignore) is black."""
    rng = np.random.default_rng(0)
    pal = rng.integers(40, 255, size=(256, 3), dtype=np.uint8)
    if dataset == "cityscapes":
        from cityscapesscripts.helpers.labels import labels

        for lab in labels:
            if 0 <= lab.trainId < 255:
                pal[lab.trainId] = lab.color
    pal[255] = 0
    pal.flags.writeable = False  # cached and shared: nobody may change it
    return pal


def colorize(label: np.ndarray | torch.Tensor, dataset: str) -> np.ndarray:
    arr = np.asarray(label, dtype=np.int64).clip(0, 255)
    return palette(dataset)[arr]


def denormalize(image: torch.Tensor) -> np.ndarray:
    """3xHxW ImageNet-normalised float -> HxWx3 uint8."""
    arr = image.detach().cpu().numpy().transpose(1, 2, 0) * _STD + _MEAN
    return (arr.clip(0, 1) * 255).astype(np.uint8)


def _tile(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    img = Image.fromarray(arr)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(img.convert("RGB").resize((size[1], size[0]), resample))


def save_grid(path: Path, rows: list[list[np.ndarray]], nearest: bool = True) -> None:
    """Rows of HxWx3 / HxW uint8 tiles, resized to the first tile's size, written atomically as PNG.
    The tile size goes into the PNG's text chunk, so a report can cut single tiles out again."""
    from PIL import PngImagePlugin

    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    canvas = np.zeros((h * len(rows), w * cols, 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            canvas[i * h:(i + 1) * h, j * w:(j + 1) * w] = _tile(tile, (h, w), nearest)
    info = PngImagePlugin.PngInfo()
    info.add_text(TILE_KEY, f"{h}x{w}")
    atomic_write(Path(path), lambda tmp: Image.fromarray(canvas).save(tmp, format="PNG", pnginfo=info))


def read_tiles(path: Path, row: int) -> list[np.ndarray]:
    """The tiles of one row of a grid written by :func:`save_grid` (left to right, padding included)."""
    with Image.open(path) as img:
        size = img.info.get(TILE_KEY)
        if not size:
            raise ValueError(f"{path}: no '{TILE_KEY}' entry (not written by hmsa.visualize.save_grid)")
        arr = np.asarray(img.convert("RGB"))
    h, w = (int(v) for v in size.split("x"))
    band = arr[row * h:(row + 1) * h]
    return [band[:, j * w:(j + 1) * w] for j in range(arr.shape[1] // w)]


def save_scale_maps(path: Path, image: torch.Tensor, label: torch.Tensor, fused_pred: torch.Tensor,
                    per_scale: dict[float, dict[str, torch.Tensor]], dataset: str) -> None:
    """Figure 3: input, ground truth, fused prediction; then per scale its prediction and attention
    (white = close to 1)."""
    rows = [[denormalize(image), colorize(label, dataset), colorize(fused_pred.cpu(), dataset)]]
    for scale in sorted(per_scale):
        item = per_scale[scale]
        pred = colorize(item["logits"][0].argmax(0).cpu(), dataset)
        row = [pred]
        if item.get("attn") is not None:
            attn = item["attn"][0, 0].detach().cpu().numpy().clip(0, 1)
            row.append((attn * 255).astype(np.uint8))
        rows.append(row)
    save_grid(path, rows)
