"""``hmsa data prepare --dataset mapillary --prepared DIR``: Mapillary Vistas resized once so that the
long edge is 2177 px (section 5.1), into a copy with the same layout that training and evaluation read.

Images are resized bilinearly (Pillow's filter widens on downscale, so it averages like an area
filter), labels with nearest neighbour. Resumable: ``DIR/PREPARED.json`` keys every finished file by
its source (size, mtime) and the parameters, so a re-run redoes only what changed; each file is written
atomically. ``long_edge: 0`` keeps every size (a plain copy): the embedded dataset's images are far
smaller than 2177 px, and upscaling them would only make the CPU pipeline slower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from hmsa.data.errors import DataError, open_image, open_label
from hmsa.io import atomic_write, atomic_write_json, check_writable_dir, clean_tmp

log = logging.getLogger("hmsa.prepare")
PAPER_LONG_EDGE = 2177
CACHE = "PREPARED.json"
_SAVE_EVERY = 200  # files between cache checkpoints: an interrupted run loses at most this many


def target_size(size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    """(W, H) scaled so that max(W, H) == long_edge (0: unchanged)."""
    w, h = size
    if long_edge <= 0 or max(w, h) == long_edge:
        return w, h
    s = long_edge / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _copy(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _key(src: Path, params: dict[str, Any]) -> str:
    st = src.stat()
    blob = json.dumps([st.st_size, st.st_mtime_ns, params], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _prepare_pair(img: Path, lab: Path, out_img: Path, out_lab: Path, long_edge: int) -> tuple[int, int]:
    """Check the pair (readable, same size, valid ids), write the resized copies; return the new (W, H)."""
    from hmsa.data.mapillary import LABEL_IDS

    image = open_image(img)
    label = open_label(lab, LABEL_IDS, image.size)
    size = target_size(image.size, long_edge)
    if size == image.size:  # nothing to resample: the original bytes
        _copy(img, out_img)
        _copy(lab, out_lab)
        return size
    resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    atomic_write(out_img, lambda tmp: resized.save(tmp, format="JPEG", quality=95))
    lab_small = Image.fromarray(label).resize(size, Image.Resampling.NEAREST)
    atomic_write(out_lab, lambda tmp: lab_small.save(tmp, format="PNG"))
    return size


def _read_cache(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text()).get("files", {}))
    except (FileNotFoundError, json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return {}  # no cache or a damaged one: everything is redone, nothing is wrong


def prepare_mapillary(root: Path, out: Path, long_edge: int = PAPER_LONG_EDGE) -> dict[str, Any]:
    """Resize ``root`` (raw v1.2 layout) into ``out`` (same layout); return counts and what was done."""
    from hmsa.data.mapillary import SPLITS, MapillaryDataset

    root, out = Path(root), Path(out)
    if long_edge < 0:
        raise DataError(out, f"--long-edge must be >= 0, got {long_edge}")
    if out.resolve() == root.resolve():
        raise DataError(out, "the prepared folder must differ from the dataset root")
    check_writable_dir(out)
    clean_tmp(out, recursive=True)  # what a killed earlier run left (never a live writer's)
    params = {"long_edge": long_edge, "image": "bilinear/jpeg95", "label": "nearest/png"}
    splits = {split: MapillaryDataset(root, split) for split in SPLITS}  # layout and labels checked here
    cache_path = out / CACHE
    cache = _read_cache(cache_path)
    done: dict[str, str] = {}
    stats = {"resized_or_copied": 0, "skipped": 0}
    _copy(root / "config.json", out / "config.json")
    for split, ds in splits.items():
        wanted = set()
        for img, lab, name in ds.items:
            rel_img = f"{split}/images/{name}.jpg"
            rel_lab = f"{split}/v1.2/labels/{name}.png"
            wanted |= {out / rel_img, out / rel_lab}
            key = _key(img, params) + _key(lab, params)
            if cache.get(rel_img) == key and (out / rel_img).is_file() and (out / rel_lab).is_file():
                stats["skipped"] += 1
            else:
                _prepare_pair(img, lab, out / rel_img, out / rel_lab, long_edge)
                stats["resized_or_copied"] += 1
            done[rel_img] = key
            if stats["resized_or_copied"] and stats["resized_or_copied"] % _SAVE_EVERY == 0:
                atomic_write_json(cache_path, {"params": params, "files": {**cache, **done}})
        _remove_stale(out / split, wanted)
    atomic_write_json(cache_path, {"params": params, "files": done})
    counts = {split: len(MapillaryDataset(out, split)) for split in SPLITS}
    log.info("prepared %s: %s (%s)", out, counts, stats)
    return {"prepared_root": str(out.resolve()), "long_edge": long_edge, "counts": counts, **stats}


def _remove_stale(split_dir: Path, wanted: set[Path]) -> None:
    """Files of images no longer in the source would be read as data: remove them."""
    for pattern in ("images/*.jpg", "v1.2/labels/*.png"):
        for f in split_dir.glob(pattern):
            if f not in wanted:
                os.unlink(f)
