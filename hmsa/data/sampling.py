"""Class-uniform sampling (section 5.1: "class uniform sampling in the data loader to equally sample
from each class"): for part of each epoch a class is drawn uniformly, then one of its centroids, and
the training crop is placed around it — rare classes (poles, signs, riders) are seen as often as road.

Centroids: every label map is cut into tiles; for each class present in a tile, the centroid of its
pixels there is one entry. They are built with a process pool on one machine (never a distributed
run) and cached as JSON keyed by a hash of the label files, so every rank and every restart reuses
them. A class with no pixels anywhere simply has no centroids and is never drawn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hmsa.io import atomic_write_json

log = logging.getLogger("hmsa.data")
Centroid = tuple[int, int, int]  # (image index, y, x)


def labels_hash(label_files: list[Path]) -> str:
    """Content hash of the label files (names and bytes): the cache key."""
    h = hashlib.sha256()
    for f in label_files:
        h.update(Path(f).name.encode())
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def image_centroids(label: np.ndarray, num_classes: int, tile: int) -> dict[int, list[tuple[int, int]]]:
    """Per class, the centroid (y, x) of its pixels in each tile×tile tile that contains it."""
    out: dict[int, list[tuple[int, int]]] = {}
    h, w = label.shape
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            block = label[y0:y0 + tile, x0:x0 + tile]
            for c in np.unique(block):
                if c >= num_classes:  # ignore label
                    continue
                ys, xs = np.nonzero(block == c)
                out.setdefault(int(c), []).append((y0 + int(ys.mean()), x0 + int(xs.mean())))
    return out


def _one(args: tuple[int, str, bytes, bytes, int, int]) -> tuple[int, dict[int, list[tuple[int, int]]]]:
    from hmsa.data.errors import open_label

    index, path, lut_bytes, valid_bytes, num_classes, tile = args
    # the loaders' own check (8-bit, one channel, ids of the dataset): a 16-bit label with ids above
    # 255 or an RGB label is a one-line error naming the file, not an IndexError in the LUT
    raw = open_label(Path(path), np.frombuffer(valid_bytes, dtype=bool))
    label = np.frombuffer(lut_bytes, dtype=np.uint8)[raw]
    return index, image_centroids(label, num_classes, tile)


def build_centroids(label_files: list[Path], lut: np.ndarray, num_classes: int, tile: int,
                    workers: int | None = None, valid: np.ndarray | None = None) -> dict[int, list[Centroid]]:
    """Class -> [(image index, y, x)]. ``lut`` maps the stored ids to train ids (255 = ignore);
    ``valid`` (bool[256]) says which stored ids the dataset has (default: all)."""
    valid_bytes = np.ones(256, bool).tobytes() if valid is None else np.asarray(valid, bool).tobytes()
    jobs = [(i, str(f), np.asarray(lut, np.uint8).tobytes(), valid_bytes, num_classes, tile)
            for i, f in enumerate(label_files)]
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_one(j) for j in jobs]
    table: dict[int, list[Centroid]] = {c: [] for c in range(num_classes)}
    for index, per_class in sorted(results):
        for c, points in per_class.items():
            table[c].extend((index, y, x) for y, x in points)
    return table


def _read_cache(path: Path, images: int, num_classes: int) -> dict[int, list[Centroid]] | None:
    """The cached table, or None (after a warning) when the file is damaged: truncated by a full disk,
    edited, or written for other images. The cache is only a cache: it is rebuilt."""
    try:
        data = json.loads(path.read_text())
        table = {int(c): [tuple(int(v) for v in p) for p in pts] for c, pts in data["centroids"].items()}
        ok = (data.get("images") == images and set(table) == set(range(num_classes))
              and all(len(p) == 3 and 0 <= p[0] < images for pts in table.values() for p in pts))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable centroid cache (%s); rebuilding it", path, type(exc).__name__)
        return None
    if not ok:
        log.warning("%s: centroid cache does not match its label files; rebuilding it", path)
        return None
    return table  # type: ignore[return-value]


def cached_centroids(label_files: list[Path], lut: np.ndarray, num_classes: int, tile: int,
                     cache_dir: Path, valid: np.ndarray | None = None) -> dict[int, list[Centroid]]:
    """Load the centroids for exactly these label files, or build and cache them."""
    key = f"{labels_hash(label_files)}-c{num_classes}-t{tile}"
    path = Path(cache_dir) / f"centroids-{key}.json"
    if path.exists():
        table = _read_cache(path, len(label_files), num_classes)
        if table is not None:
            return table
    table = build_centroids(label_files, lut, num_classes, tile, valid=valid)
    atomic_write_json(path, {"images": len(label_files), "tile": tile,
                             "centroids": {str(c): pts for c, pts in table.items()}})
    return table


def draw(rng: np.random.Generator, table: dict[int, list[Centroid]]) -> Centroid | None:
    """A class uniformly among those with pixels, then one of its centroids."""
    classes = sorted(c for c, pts in table.items() if pts)  # not dict order: JSON reorders keys
    if not classes:
        return None
    pts = table[classes[int(rng.integers(len(classes)))]]
    return tuple(pts[int(rng.integers(len(pts)))])  # type: ignore[return-value]
