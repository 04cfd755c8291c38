"""The embedded dataset: generated street scenes written in the REAL Cityscapes and Mapillary Vistas
v1.2 on-disk formats, so the loaders that read it also read the real datasets.

The scenes themselves (what is drawn, and why each element has the cue it has) are
:mod:`hmsa.data.scenes`; this module maps their classes to each dataset's ids, annotates the coarse
split and writes the files.


``train_extra`` gets coarse labels like gtCoarse (:func:`_coarse`): a polygon with a few vertices
inside each object, wide unlabelled borders between objects, thin things skipped, some objects left
out. The truth of those images is written OUTSIDE the Cityscapes root, to ``<out>/truth/cityscapes/
train_extra/<city>/<stem>_gtFine_labelIds.png`` (for ``hmsa autolabel --truth``). The ``test`` split has
real gtFine labels (the real benchmark withholds them; ours can score a model trained on train+val).
Deterministic for a seed: every image has its own generator derived from (seed, dataset, split, i).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hmsa.data.labels import MAPILLARY_V12_LABELS
from hmsa.data.scenes import BUILDING, CITYSCAPES_IDS, EGO, MAPILLARY_IDS, ROAD, SIDEWALK, SKY, Canvas, draw
from hmsa.errors import BadInputError
from hmsa.io import remove_dead_builds

CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster"),
          "test": ("berlin", "bielefeld", "bonn"), "train_extra": ("augsburg", "bayreuth", "konstanz")}
DEFAULT_CITYSCAPES = {"train": 48, "val": 48, "test": 48, "train_extra": 64}
DEFAULT_MAPILLARY = {"training": 48, "validation": 32}
COMPLETE = "SYNTH_COMPLETE.json"
MIN_SIDE = 16  # px: smaller scenes leave no room for their objects (an IndexError at 8x16)
TRUTH = "truth"  # <out>/truth/cityscapes/<split>/...: true labels of the coarse split, outside the root
# Coarse annotation: chance an object is left out, and the unlabelled margin (fraction of the width).
DROP = {SKY: 0.05, ROAD: 0.05, SIDEWALK: 0.05, BUILDING: 0.1}
DROP_OTHER, MARGIN = 0.3, 1 / 64



def _coarse(rng: np.random.Generator, cv: Canvas, ids: dict[int, int]) -> np.ndarray:
    """Coarse labels like gtCoarse: for each element an annotator keeps, a polygon of a few vertices
    placed a margin inside it (wide unlabelled borders between elements), clipped to that inside;
    thin things get no polygon, and the polygon behind one is cut around it: gtCoarse's rule is that a
    polygon holds pixels of one class only, so a pole never takes the label of the wall behind it."""
    from scipy.ndimage import binary_dilation, distance_transform_edt

    inst = cv.inst
    edge = np.zeros(inst.shape, bool)  # both pixels of every pair of neighbours in different elements
    dy, dx = inst[1:] != inst[:-1], inst[:, 1:] != inst[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    dist = distance_transform_edt(~edge)
    frame = np.ones(inst.shape, bool)  # polygons may run along the image border: vertices there too
    frame[2:-2, 2:-2] = False
    out = np.zeros(inst.shape, np.uint8)  # 0 = unlabeled
    margin = max(2.0, inst.shape[1] * MARGIN)
    for iid, c in enumerate(cv.kinds):
        if c == EGO or rng.random() < DROP.get(c, DROP_OTHER):
            continue
        region = inst == iid
        ys, xs = np.nonzero(region)
        if ys.size == 0:
            continue
        m = min(margin, max(1.0, 0.25 * min(np.ptp(ys) + 1, np.ptp(xs) + 1)))
        core = region & (dist > m)
        rim = core & ((dist <= m + 2) | frame)
        ys, xs = np.nonzero(rim)
        if ys.size < 6:
            continue
        pick = rng.choice(ys.size, min(ys.size, int(rng.integers(8, 17))), replace=False)
        out[_polygon(xs[pick], ys[pick], inst.shape) & core] = ids[c]
    for mask in cv.thin:
        out[binary_dilation(mask)] = 0
    return out


def _polygon(xs: np.ndarray, ys: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The convex polygon around these points (an annotator's few clicks), rasterised."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.stack([xs, ys], 1).astype(float)
    try:
        points = points[ConvexHull(points).vertices]
    except QhullError:  # collinear: a line
        pass
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=1)
    return np.asarray(canvas, bool)


def scene(seed: int, dataset: str, split: str, index: int, size: tuple[int, int] = (128, 256)) -> tuple:
    """(abstract class map, RGB image, coarse Cityscapes labelIds or None) of one generated image,
    exactly as ``generate`` draws it (Mapillary images vary in width)."""
    cv, rng = _drawn(seed, dataset, split, index, size)
    coarse = _coarse(rng, cv, CITYSCAPES_IDS) if dataset == "cityscapes" and split == "train_extra" else None
    return cv.cls, cv.img.astype(np.uint8), coarse


def canvas(seed: int, dataset: str, split: str, index: int, size: tuple[int, int] = (128, 256)) -> Canvas:
    """The :class:`Canvas` of one generated image as ``generate`` draws it: besides the class map and
    image, what only the generator knows (e.g. which ground is in deep shadow), for measuring models."""
    return _drawn(seed, dataset, split, index, size)[0]


def _drawn(seed: int, dataset: str, split: str, index: int,
           size: tuple[int, int]) -> tuple[Canvas, np.random.Generator]:
    rng = _seed(seed, dataset, split, index)  # the coarse annotation draws on from here
    h, w = size
    if dataset == "mapillary":  # real Mapillary images come in many sizes: loaders must not assume one
        w = size[1] + int(rng.integers(-2, 3)) * (size[1] // 16)
    return draw(rng, h, w), rng


def _seed(seed: int, *key: str | int) -> np.random.Generator:
    digest = hashlib.sha256(json.dumps([seed, *key]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _lut(ids: dict[int, int], fill: int) -> np.ndarray:
    lut = np.full(256, fill, np.uint8)
    for c, i in ids.items():
        lut[c] = i
    return lut


def _write_cityscapes(out: Path, seed: int, counts: dict[str, int], size: tuple[int, int]) -> None:
    root, lut = out / "cityscapes", _lut(CITYSCAPES_IDS, 0)
    for split, n in counts.items():
        cities = CITIES.get(split, (f"{split}city",))
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}/{city}_{i:06d}_000019"
            cls, img, coarse = scene(seed, "cityscapes", split, i, size)
            _save_png(root / "leftImg8bit" / split / f"{stem}_leftImg8bit.png", img)
            if coarse is None:
                _save_png(root / "gtFine" / split / f"{stem}_gtFine_labelIds.png", lut[cls])
            else:  # the truth stays outside the root: the root is exactly the official layout
                _save_png(root / "gtCoarse" / split / f"{stem}_gtCoarse_labelIds.png", coarse)
                _save_png(out / TRUTH / "cityscapes" / split / f"{stem}_gtFine_labelIds.png", lut[cls])


def _write_mapillary(root: Path, seed: int, counts: dict[str, int], size: tuple[int, int]) -> None:
    lut = _lut(MAPILLARY_IDS, 65)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"labels": MAPILLARY_V12_LABELS}, indent=1))
    for split, n in counts.items():
        for i in range(n):
            cls, img, _ = scene(seed, "mapillary", split, i, size)
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


def check_request(seed: int, counts: dict[str, dict[str, int]], size: tuple[int, int]) -> None:
    """Refuse what would write a dataset nobody asked for (``counts``: dataset -> split -> images;
    the splits each dataset's layout has, whole counts >= 0, at least ``MIN_SIDE`` px a side)."""
    if seed < 0:
        raise BadInputError(f"--seed {seed}: must be >= 0")
    if len(size) != 2 or min(size) < MIN_SIDE:
        raise BadInputError(f"--size {'x'.join(map(str, size))}: height and width must be >= {MIN_SIDE} px")
    known = {"cityscapes": DEFAULT_CITYSCAPES, "mapillary": DEFAULT_MAPILLARY}
    for dataset, splits in counts.items():
        for split, n in splits.items():
            if split not in known[dataset]:
                raise BadInputError(f"--{dataset} {split}={n}: unknown split {split!r} "
                                    f"(known: {', '.join(known[dataset])})")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise BadInputError(f"--{dataset} {split}={n}: the image count must be a whole number >= 0")


def generate(out: Path, seed: int = 0, cityscapes_counts: dict[str, int] | None = None,
             mapillary_counts: dict[str, int] | None = None, size: tuple[int, int] = (128, 256),
             force: bool = False) -> dict:
    """Write ``out/cityscapes``, ``out/mapillary`` and ``out/truth/cityscapes`` (the true labels of the
    coarse split); atomic (built beside ``out``, then renamed). An existing complete dataset is kept
    unless ``force``."""
    out = Path(out)
    cs = dict(cityscapes_counts or DEFAULT_CITYSCAPES)
    mv = dict(mapillary_counts or DEFAULT_MAPILLARY)
    check_request(seed, {"cityscapes": cs, "mapillary": mv}, tuple(size))
    marker = out / COMPLETE
    if marker.exists() and not force:
        return json.loads(marker.read_text())
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    remove_dead_builds(out.parent, f".{out.name}.tmp-")  # a kill during an earlier synth
    shutil.rmtree(tmp, ignore_errors=True)
    _write_cityscapes(tmp, seed, cs, size)
    _write_mapillary(tmp / "mapillary", seed, mv, size)
    truth = {"cityscapes": {s: f"{TRUTH}/cityscapes/{s}" for s in cs if s == "train_extra" and cs[s] > 0}}
    summary = {"seed": seed, "size": list(size), "counts": {"cityscapes": cs, "mapillary": mv},
               "truth": truth, "content_hash": content_hash(tmp)}
    (tmp / COMPLETE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return summary
