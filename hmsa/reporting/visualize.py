"""Figures: colourised label maps and the per-scale prediction / attention grid of Figure 3."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hmsa.errors import BadInputError
from hmsa.io import atomic_write

_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])
TILE_KEY = "hmsa.tile"  # PNG text chunk: "HxW" of one tile of a grid
SCALES_KEY = "hmsa.scales"  # PNG text chunk of a Figure 3 grid: its per-scale rows, e.g. "0.5,1,2"
DATASET_KEY = "hmsa.dataset"  # PNG text chunk: whose palette colours the label tiles


@functools.lru_cache(maxsize=4)
def palette(dataset: str) -> np.ndarray:
    """(256, 3) uint8: the dataset's own colours (Cityscapes: the official trainId colours; Mapillary:
    the colours of ``hmsa.data.labels.MAPILLARY_V12_LABELS``); 255 (ignore) is black."""
    rng = np.random.default_rng(0)
    pal = rng.integers(40, 255, size=(256, 3), dtype=np.uint8)
    if dataset == "cityscapes":
        from cityscapesscripts.helpers.labels import labels

        for lab in labels:
            if 0 <= lab.trainId < 255:
                pal[lab.trainId] = lab.color
    elif dataset == "mapillary":
        from hmsa.data.labels import MAPILLARY_V12_LABELS

        for i, lab in enumerate(MAPILLARY_V12_LABELS):
            pal[i] = lab["color"]
    pal[255] = 0
    pal.flags.writeable = False  # cached and shared: nobody may change it
    return pal


def class_names(dataset: str) -> list[str]:
    """Readable class names in label-id order (the ids :func:`palette` colours)."""
    from hmsa.data.labels import CITYSCAPES_CLASSES, MAPILLARY_V12_LABELS

    if dataset == "cityscapes":
        return list(CITYSCAPES_CLASSES)
    if dataset == "mapillary":
        return [lab["readable"] for lab in MAPILLARY_V12_LABELS]
    raise ValueError(f"unknown dataset {dataset!r} (expected cityscapes or mapillary)")


def label_ids(tiles: list[np.ndarray], dataset: str) -> list[int]:
    """The label ids whose palette colour occurs in colourised tiles (255 = ignore included), for a
    legend that lists what the figure shows; colours of no class (e.g. resampling blends) are skipped."""
    pal = palette(dataset)
    ids = [*range(len(class_names(dataset))), 255]
    lookup = {tuple(int(c) for c in pal[i]): i for i in reversed(ids)}
    seen: set[int] = set()
    for tile in tiles:
        colours = np.unique(np.asarray(tile)[..., :3].reshape(-1, 3), axis=0)
        seen.update(lookup[t] for t in map(tuple, colours.tolist()) if t in lookup)
    return sorted(seen)


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


def save_grid(path: Path, rows: list[list[np.ndarray]], nearest: bool = True,
              meta: dict[str, str] | None = None) -> None:
    """Rows of HxWx3 / HxW uint8 tiles, resized to the first tile's size, written atomically as PNG.
    The tile size (and ``meta``) goes into the PNG's text chunks, so a report can cut single tiles out
    again and label them."""
    from PIL import PngImagePlugin

    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    # white padding: a short row (Figure 3's per-scale rows have 2 tiles, its first row 3) must not
    # read as a black (all "ignore") label tile
    canvas = np.full((h * len(rows), w * cols, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            canvas[i * h:(i + 1) * h, j * w:(j + 1) * w] = _tile(tile, (h, w), nearest)
    info = PngImagePlugin.PngInfo()
    info.add_text(TILE_KEY, f"{h}x{w}")
    for key, value in (meta or {}).items():
        info.add_text(key, value)
    atomic_write(Path(path), lambda tmp: Image.fromarray(canvas).save(tmp, format="PNG", pnginfo=info))


def grid_meta(path: Path) -> dict[str, str]:
    """The ``hmsa.*`` text chunks of a grid written by :func:`save_grid`."""
    with Image.open(path) as img:
        return {k: str(v) for k, v in img.info.items() if k.startswith("hmsa.")}


def read_tiles(path: Path, row: int) -> list[np.ndarray]:
    """The tiles of one row of a grid written by :func:`save_grid` (left to right, padding included)."""
    with Image.open(path) as img:
        size = img.info.get(TILE_KEY)
        if not size:
            raise BadInputError(f"{path}: no '{TILE_KEY}' entry (not written by hmsa.reporting.visualize.save_grid)")
        arr = np.asarray(img.convert("RGB"))
    h, w = (int(v) for v in size.split("x"))
    band = arr[row * h:(row + 1) * h]
    return [band[:, j * w:(j + 1) * w] for j in range(arr.shape[1] // w)]


def save_scale_maps(path: Path, image: torch.Tensor, label: torch.Tensor, fused_pred: torch.Tensor,
                    per_scale: dict[float, dict[str, torch.Tensor]], dataset: str) -> None:
    """Figure 3 material: input, ground truth, fused prediction; then one row per scale (ascending): its
    prediction and attention (white = close to 1). The scales and dataset go into the PNG's text
    chunks; the report draws the labelled figure from it (``hmsa.reporting.figures.figure3``)."""
    rows = [[denormalize(image), colorize(label, dataset), colorize(fused_pred.cpu(), dataset)]]
    for scale in sorted(per_scale):
        item = per_scale[scale]
        pred = colorize(item["logits"][0].argmax(0).cpu(), dataset)
        row = [pred]
        if item.get("attn") is not None:
            attn = item["attn"][0, 0].detach().cpu().numpy().clip(0, 1)
            row.append((attn * 255).astype(np.uint8))
        rows.append(row)
    save_grid(path, rows, meta={SCALES_KEY: ",".join(f"{s:g}" for s in sorted(per_scale)), DATASET_KEY: dataset})
