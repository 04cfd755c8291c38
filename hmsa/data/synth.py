"""The embedded dataset: generated street scenes written in the REAL Cityscapes and Mapillary Vistas
v1.2 on-disk formats, so the loaders that read it also read the real datasets.

Each scene carries the two failure modes of the paper's Figure 1 (section 1):
- *fine detail*: poles 1-2 px wide, small signs and traffic lights, lane marks — they need a high
  inference scale;
- *class confusion*: the whole ground plane has ONE texture whether it is road or sidewalk; only the
  facade colour of the buildings far above it (red brick = pedestrian zone -> sidewalk, blue-grey =
  street -> road) tells which — a cue outside a small receptive field, which a low scale brings in.
Deterministic for a seed: every image has its own generator derived from (seed, dataset, split, i).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hmsa.data.labels import MAPILLARY_V12_LABELS, MAPILLARY_V12_NAMES

# Abstract scene classes, mapped to each dataset's ids below.
SKY, BUILDING, ROAD, SIDEWALK, VEG, TERRAIN, POLE, SIGN, LIGHT, PERSON, CAR, LANE, EGO = range(13)
THIN = (POLE, SIGN, LIGHT, LANE)
COLOURS = {SKY: (120, 170, 225), VEG: (60, 130, 50), TERRAIN: (140, 150, 80), POLE: (55, 55, 60),
           SIGN: (230, 200, 40), LIGHT: (30, 30, 30), PERSON: (200, 60, 140), LANE: (235, 235, 235),
           EGO: (25, 25, 30), ROAD: (128, 128, 128), SIDEWALK: (128, 128, 128)}
FACADE = {ROAD: (95, 105, 150), SIDEWALK: (165, 80, 60)}  # the far-away cue
# Cityscapes labelIds (the official ids: road 7, sidewalk 8, building 11, pole 17, ...; ego vehicle 1).
CITYSCAPES_IDS = {SKY: 23, BUILDING: 11, ROAD: 7, SIDEWALK: 8, VEG: 21, TERRAIN: 22, POLE: 17, SIGN: 20,
                  LIGHT: 19, PERSON: 24, CAR: 26, LANE: 7, EGO: 1}
_MV = {n: i for i, n in enumerate(MAPILLARY_V12_NAMES)}
MAPILLARY_IDS = {SKY: _MV["nature--sky"], BUILDING: _MV["construction--structure--building"],
                 ROAD: _MV["construction--flat--road"], SIDEWALK: _MV["construction--flat--sidewalk"],
                 VEG: _MV["nature--vegetation"], TERRAIN: _MV["nature--terrain"],
                 POLE: _MV["object--support--pole"], SIGN: _MV["object--traffic-sign--front"],
                 LIGHT: _MV["object--traffic-light"], PERSON: _MV["human--person"],
                 CAR: _MV["object--vehicle--car"], LANE: _MV["marking--general"], EGO: _MV["void--ego-vehicle"]}

CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",), "train_extra": ("augsburg", "bayreuth")}
DEFAULT_CITYSCAPES = {"train": 24, "val": 8, "train_extra": 24}
DEFAULT_MAPILLARY = {"training": 24, "validation": 8}
COMPLETE = "SYNTH_COMPLETE.json"


def _scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (class map HxW uint8 of abstract classes, RGB image HxWx3 uint8)."""
    cls = np.full((h, w), SKY, np.uint8)
    horizon = int(h * rng.uniform(0.40, 0.50))
    ground = ROAD if rng.random() < 0.5 else SIDEWALK
    cls[horizon:] = ground
    facade = np.zeros((h, w), bool)
    for x0, x1 in ((0, int(w * rng.uniform(0.3, 0.42))), (int(w * rng.uniform(0.58, 0.7)), w)):
        top = int(h * rng.uniform(0.05, 0.25))
        facade[top:horizon, x0:x1] = True
    cls[facade] = BUILDING
    for _ in range(rng.integers(1, 3)):  # trees in the gap between the buildings
        cy, cx, r = int(h * rng.uniform(0.15, 0.35)), int(w * rng.uniform(0.4, 0.6)), int(h * 0.08)
        yy, xx = np.ogrid[:h, :w]
        cls[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (yy < horizon)] = VEG
    for x0, x1 in ((0, int(w * 0.08)), (int(w * 0.92), w)):  # verges
        cls[horizon + int(h * 0.05):, x0:x1] = TERRAIN
    _objects(rng, cls, h, w, horizon, ground)
    _thin(rng, cls, h, w, horizon, ground)
    cls[int(h * 0.94):] = EGO
    return cls, _render(rng, cls, ground)


def _objects(rng: np.random.Generator, cls: np.ndarray, h: int, w: int, horizon: int, ground: int) -> None:
    for _ in range(rng.integers(1, 4)):
        if ground == ROAD:  # cars on streets, people in pedestrian zones
            bh, bw = int(h * rng.uniform(0.08, 0.14)), int(w * rng.uniform(0.08, 0.15))
            kind = CAR
        else:
            bh, bw = int(h * rng.uniform(0.10, 0.16)), max(3, int(w * 0.015))
            kind = PERSON
        y = int(rng.uniform(horizon + 2, h * 0.85))
        x = int(rng.uniform(w * 0.15, w * 0.85 - bw))
        cls[max(0, y - bh):y, x:x + bw] = kind


def _thin(rng: np.random.Generator, cls: np.ndarray, h: int, w: int, horizon: int, ground: int) -> None:
    """Fine detail: poles 1-2 px wide with small signs / lights, and lane marks on roads."""
    for _ in range(rng.integers(2, 5)):
        x, width = int(rng.uniform(w * 0.05, w * 0.95)), int(rng.integers(1, 3))
        top, bottom = int(h * rng.uniform(0.12, 0.3)), int(rng.uniform(horizon + 4, h * 0.9))
        cls[top:bottom, x:x + width] = POLE
        if rng.random() < 0.7:
            s = max(3, h // 24)
            kind = SIGN if rng.random() < 0.6 else LIGHT
            cls[top:top + s + (s if kind == LIGHT else 0), max(0, x - s // 2):x - s // 2 + s] = kind
    if ground == ROAD:
        for y in range(horizon + 2, int(h * 0.94), 6):  # dashed centre line, perspective-shifted
            x = int(w * 0.5 + (y - horizon) * 0.3)
            cls[y:y + 3, x:x + 1 + (y - horizon) // 30] = LANE


def _render(rng: np.random.Generator, cls: np.ndarray, ground: int) -> np.ndarray:
    img = np.zeros((*cls.shape, 3), np.float32)
    for c, colour in COLOURS.items():
        img[cls == c] = colour
    img[cls == BUILDING] = FACADE[ground]
    cars = cls == CAR
    img[cars] = rng.integers(40, 230, 3)
    # Shared texture: identical noise statistics for road and sidewalk, so only context separates them.
    img += rng.normal(0, 14, img.shape).astype(np.float32)
    img *= rng.uniform(0.85, 1.15)
    return img.clip(0, 255).astype(np.uint8)


def _coarse(rng: np.random.Generator, cls: np.ndarray, ids: dict[int, int]) -> np.ndarray:
    """Coarse labels like gtCoarse: polygons well inside objects, thin things and parts left out."""
    from scipy.ndimage import binary_erosion

    out = np.zeros(cls.shape, np.uint8)  # 0 = unlabeled
    r = max(3, cls.shape[1] // 40)
    for c in np.unique(cls):
        if c in THIN or c == PERSON or (c not in (ROAD, SIDEWALK, SKY) and rng.random() < 0.3):
            continue
        inner = binary_erosion(cls == c, iterations=r)
        out[inner] = ids[int(c)]
    return out


def _seed(seed: int, *key: str | int) -> np.random.Generator:
    digest = hashlib.sha256(json.dumps([seed, *key]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _write_cityscapes(root: Path, seed: int, counts: dict[str, int], size: tuple[int, int]) -> None:
    lut = np.zeros(256, np.uint8)
    for c, i in CITYSCAPES_IDS.items():
        lut[c] = i
    for split, n in counts.items():
        cities = CITIES.get(split, (f"{split}city",))
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_000019"
            rng = _seed(seed, "cityscapes", split, i)
            cls, img = _scene(rng, *size)
            _save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", img)
            if split in ("train", "val", "test"):
                _save_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lut[cls])
            if split == "train_extra":
                _save_png(root / "gtCoarse" / split / city / f"{stem}_gtCoarse_labelIds.png",
                          _coarse(rng, cls, CITYSCAPES_IDS))


def _write_mapillary(root: Path, seed: int, counts: dict[str, int], size: tuple[int, int]) -> None:
    lut = np.full(256, 65, np.uint8)
    for c, i in MAPILLARY_IDS.items():
        lut[c] = i
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"labels": MAPILLARY_V12_LABELS}, indent=1))
    for split, n in counts.items():
        for i in range(n):
            rng = _seed(seed, "mapillary", split, i)
            # Real Mapillary images come in many sizes: vary the width so loaders cannot assume one.
            w = size[1] + int(rng.integers(-2, 3)) * (size[1] // 16)
            cls, img = _scene(rng, size[0], w)
            name = f"{hashlib.sha1(f'{seed}{split}{i}'.encode()).hexdigest()[:22]}"
            path = root / split / "images" / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, format="JPEG", quality=95)
            _save_png(root / split / "v1.2" / "labels" / f"{name}.png", lut[cls])


def content_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != COMPLETE:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def generate(out: Path, seed: int = 0, cityscapes_counts: dict[str, int] | None = None,
             mapillary_counts: dict[str, int] | None = None, size: tuple[int, int] = (128, 256),
             force: bool = False) -> dict:
    """Write ``out/cityscapes`` and ``out/mapillary``; atomic (built beside ``out``, then renamed).
    An existing complete dataset is kept unless ``force``."""
    out = Path(out)
    marker = out / COMPLETE
    if marker.exists() and not force:
        return json.loads(marker.read_text())
    cs = dict(cityscapes_counts or DEFAULT_CITYSCAPES)
    mv = dict(mapillary_counts or DEFAULT_MAPILLARY)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_cityscapes(tmp / "cityscapes", seed, cs, size)
    _write_mapillary(tmp / "mapillary", seed, mv, size)
    summary = {"seed": seed, "size": list(size), "counts": {"cityscapes": cs, "mapillary": mv},
               "content_hash": content_hash(tmp)}
    (tmp / COMPLETE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return summary
