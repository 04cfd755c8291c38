"""The embedded dataset: generated street scenes written in the REAL Cityscapes and Mapillary Vistas
v1.2 on-disk formats, so the loaders that read it also read the real datasets.

Every scene holds most of the 19 Cityscapes evaluation classes (each class is in at least ~40 % of
the default val images), each with a cue a small CNN can learn, and the two failure modes of the
paper's Figure 1 (section 1) — scale matters both ways:

- *fine detail, needs a HIGH scale* (lost at 0.5): poles 2-3 px wide; traffic signs (yellow squares,
  5-9 px) and traffic lights (black boxes with one lit 2-row lamp) on top of them; bicycles drawn with
  2 px cyan lines (frame and wheel rims); fences, a 1 px diagonal lattice over whatever is behind it (its
  label covers the gaps, as in Cityscapes); dashed lane / path marks (road / sidewalk in Cityscapes,
  ``marking--general`` in Mapillary).
- *context, needs a LOW scale* (wrong at 2.0, where the receptive field sees relatively less): the whole
  ground plane has ONE texture whether it is road or sidewalk, with the same marks on it and the same
  road users on it; only the colour of the facades far above it (blue-grey = street -> road, red brick =
  pedestrian zone -> sidewalk) tells which; no local cue does. (A nearer kind of context: Mapillary's
  bicyclist vs motorcyclist look alike and differ by the vehicle under them.)

The other elements (cue in brackets): sky (light blue gradient, top), building (facade colour with a
window grid), wall (beige blocks with dark joints, low, at the horizon), vegetation (mottled green
discs), terrain (olive verges widening towards the camera), person (magenta body, skin head), rider
(azure shirt on a bike), car (red body, dark cabin and wheels), truck (blue cab, white cargo box),
bus (amber box with a window band), train (teal, long, window band, at the horizon), motorcycle
(purple body on two dark wheels), ego vehicle (dark band at the bottom, ignored). Road users are
placed in depth order with perspective (far ones small, near ones large).

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
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hmsa.data.labels import MAPILLARY_V12_LABELS, MAPILLARY_V12_NAMES
from hmsa.errors import BadInputError
from hmsa.io import remove_dead_builds

# Abstract scene classes, mapped to each dataset's ids below.
(SKY, BUILDING, ROAD, SIDEWALK, VEG, TERRAIN, POLE, SIGN, LIGHT, PERSON, CAR, LANE, EGO, WALL, FENCE,
 BICYCLIST, MOTORCYCLIST, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE, MARK) = range(23)
GROUND = 99  # colour key of the shared road/sidewalk texture (not a class)
THIN = (POLE, SIGN, LIGHT, BICYCLE, LANE, MARK)  # lost at a low scale
# Thin and small things are drawn at the size they have relative to the models' OUTPUT STRIDE in
# Cityscapes, not relative to the image. The images are 1/8 of Cityscapes' side but the models keep the
# paper's strides (HRNet-OCR 4, DeepLabV3+ 8): at 1/8 size a pole (8-20 px at 2048 wide) is 1-2 px,
# well under one output cell, and no model learned it (pole, sign, light, person, rider, bicycle and
# motorcycle scored 0 IoU for every model). At DETAIL px (poles DETAIL-1..DETAIL, sign sides 2-3x,
# person widths > DETAIL) they are about one stride-4 cell at scale 1.0 and half of one at 0.5, where
# they are lost again: the paper's Figure 1 case for a high scale. Measured (seed 0, Table 1
# hierarchical): person 0 -> 14, bicycle 0 -> 16, motorcycle 0.5 -> 44 IoU; pole, sign and light stay ~0.
DETAIL = 3
LINE = DETAIL - 1  # width of drawn lines (bicycle frame and rims, a traffic light's lamp)
SKIPPED = (POLE, SIGN, LIGHT, BICYCLE)  # too thin for a coarse annotator's polygon
COLOURS = {SKY: (120, 170, 225), VEG: (60, 130, 50), TERRAIN: (140, 150, 80), POLE: (55, 55, 60),
           SIGN: (230, 200, 40), LIGHT: (30, 30, 30), PERSON: (200, 60, 140), LANE: (235, 235, 235),
           EGO: (25, 25, 30), GROUND: (128, 128, 128), WALL: (180, 175, 160), FENCE: (210, 160, 50),
           BICYCLIST: (30, 120, 255), CAR: (190, 40, 40), TRUCK: (40, 80, 170), BUS: (240, 170, 20),
           TRAIN: (30, 150, 140), MOTORCYCLE: (120, 40, 160), BICYCLE: (0, 210, 210)}
SKIN, WINDOW, WHEEL, CARGO = (225, 180, 150), (50, 60, 80), (20, 20, 20), (215, 215, 200)
FACADE = {ROAD: (95, 105, 150), SIDEWALK: (165, 80, 60)}  # the far-away cue
# Cityscapes labelIds (the official ids: road 7, sidewalk 8, building 11, wall 12, ...; ego vehicle 1).
CITYSCAPES_IDS = {SKY: 23, BUILDING: 11, ROAD: 7, SIDEWALK: 8, VEG: 21, TERRAIN: 22, POLE: 17, SIGN: 20,
                  LIGHT: 19, PERSON: 24, CAR: 26, LANE: 7, EGO: 1, WALL: 12, FENCE: 13, BICYCLIST: 25,
                  MOTORCYCLIST: 25, TRUCK: 27, BUS: 28, TRAIN: 31, MOTORCYCLE: 32, BICYCLE: 33, MARK: 8}
_MV = {n: i for i, n in enumerate(MAPILLARY_V12_NAMES)}
_MV_NAMES = {SKY: "nature--sky", BUILDING: "construction--structure--building", ROAD: "construction--flat--road",
             SIDEWALK: "construction--flat--sidewalk", VEG: "nature--vegetation", TERRAIN: "nature--terrain",
             POLE: "object--support--pole", SIGN: "object--traffic-sign--front", LIGHT: "object--traffic-light",
             PERSON: "human--person", CAR: "object--vehicle--car", LANE: "marking--general",
             EGO: "void--ego-vehicle", WALL: "construction--barrier--wall", FENCE: "construction--barrier--fence",
             BICYCLIST: "human--rider--bicyclist", MOTORCYCLIST: "human--rider--motorcyclist",
             TRUCK: "object--vehicle--truck", BUS: "object--vehicle--bus", TRAIN: "object--vehicle--on-rails",
             MOTORCYCLE: "object--vehicle--motorcycle", BICYCLE: "object--vehicle--bicycle",
             MARK: "marking--general"}
MAPILLARY_IDS = {c: _MV[n] for c, n in _MV_NAMES.items()}

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


class _Canvas:
    """Class map, image and the map of visible non-thin elements (what a coarse annotator outlines)."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.yy, self.xx = np.mgrid[:h, :w]
        self.cls = np.full((h, w), SKY, np.uint8)
        self.img = np.zeros((h, w, 3), np.float32)
        self.inst = np.zeros((h, w), np.int32)  # element id; thin things do not change it
        self.kinds = [SKY]  # class of each element id
        self.thin: list[np.ndarray] = []  # masks of the thin things

    def new(self, c: int) -> int:
        self.kinds.append(c)
        return len(self.kinds) - 1

    def paint(self, mask: np.ndarray, c: int, colour: object, iid: int | None = None) -> None:
        """``colour``: RGB, or an HxWx3 texture read where ``mask`` is; ``iid``: the element (new if None)."""
        col = np.asarray(colour, np.float32)
        self.cls[mask] = c
        self.img[mask] = col[mask] if col.ndim == 3 else col
        if c in SKIPPED:
            self.thin.append(mask)
        else:
            self.inst[mask] = self.new(c) if iid is None else iid

    def box(self, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        return (self.yy >= int(y0)) & (self.yy < int(y1)) & (self.xx >= int(x0)) & (self.xx < int(x1))

    def disc(self, cy: float, cx: float, r: float) -> np.ndarray:
        return (self.yy - cy) ** 2 + (self.xx - cx) ** 2 <= r * r


def _jitter(rng: np.random.Generator, colour: tuple, amount: int = 20) -> np.ndarray:
    return np.asarray(colour, np.float32) + rng.integers(-amount, amount + 1, 3)


def _scene(rng: np.random.Generator, h: int, w: int) -> _Canvas:
    """One scene, drawn back to front."""
    cv = _Canvas(h, w)
    horizon = int(h * rng.uniform(0.40, 0.50))
    ground = ROAD if rng.random() < 0.5 else SIDEWALK
    sky = np.asarray(COLOURS[SKY], np.float32) + (cv.yy / horizon)[..., None] * 40  # paler at the horizon
    cv.img[:] = sky
    _background(rng, cv, horizon, ground)
    _ground(rng, cv, horizon, ground)
    _road_users(rng, cv, horizon)
    _poles(rng, cv, horizon)
    cv.paint(cv.yy >= int(h * 0.94), EGO, COLOURS[EGO])
    cv.img += rng.normal(0, 10, cv.img.shape).astype(np.float32)
    cv.img *= rng.uniform(0.85, 1.15)
    cv.img = cv.img.clip(0, 255)
    return cv


def _background(rng: np.random.Generator, cv: _Canvas, horizon: int, ground: int) -> None:
    """Facades (the road/sidewalk cue), trees, a train, a wall and a fence along the horizon."""
    h, w = cv.h, cv.w
    fac = _jitter(rng, FACADE[ground], 8)
    windows = ((cv.yy % 6) < 3) & ((cv.xx % 7) < 3)
    facade = np.where(windows[..., None], fac * 0.55, fac)
    for x0, x1 in ((0, w * rng.uniform(0.3, 0.42)), (w * rng.uniform(0.58, 0.7), w)):
        cv.paint(cv.box(h * rng.uniform(0.05, 0.25), horizon, x0, x1), BUILDING, facade)
    mottle = rng.uniform(0.6, 1.3, (h // 3 + 1, w // 3 + 1, 1)).repeat(3, 0).repeat(3, 1)[:h, :w]
    for _ in range(rng.integers(1, 4)):  # trees, mostly in the gap between the buildings
        cy, cx, r = h * rng.uniform(0.15, 0.35), w * rng.uniform(0.3, 0.7), h * rng.uniform(0.06, 0.1)
        cv.paint(cv.disc(cy, cx, r) & (cv.yy < horizon), VEG, _jitter(rng, COLOURS[VEG], 10) * mottle)
    if rng.random() < 0.45:  # a tram at the end of the street
        th, tw = h * rng.uniform(0.10, 0.16), w * rng.uniform(0.3, 0.5)
        x0, y1 = w * rng.uniform(0.05, 0.95) - tw / 2, horizon + h * 0.02
        body = _jitter(rng, COLOURS[TRAIN], 15)
        band = cv.box(y1 - th * 0.8, y1 - th * 0.5, x0, x0 + tw) & ((cv.xx % 5) > 0)
        tex = np.where(band[..., None], np.asarray(WINDOW, np.float32), body)
        cv.paint(cv.box(y1 - th, y1, x0, x0 + tw), TRAIN, tex)
    left = rng.random() < 0.5
    for kind, p in ((WALL, 0.6), (FENCE, 0.6)):
        if rng.random() >= p:
            continue
        bh, bw = h * rng.uniform(0.06, 0.12), w * rng.uniform(0.15, 0.35)
        x0 = w * rng.uniform(0.0, 0.15) if left else w * rng.uniform(0.85, 1.0) - bw
        y1 = horizon + h * rng.uniform(0.0, 0.04)
        region = cv.box(y1 - bh, y1, x0, x0 + bw)
        col = _jitter(rng, COLOURS[kind], 12)
        if kind == WALL:  # blocks: dark horizontal joints, staggered vertical joints
            joint = (cv.yy % 4 == 0) | ((cv.xx + 5 * ((cv.yy // 4) % 2)) % 10 == 0)
            tex = np.where(joint[..., None], col * 0.6, col)
        else:  # a 1 px lattice over what is behind it; the gaps are fence too
            lattice = ((cv.xx + cv.yy) % 4 == 0) | ((cv.xx - cv.yy) % 4 == 0)
            tex = np.where(lattice[..., None], col, cv.img)
        cv.paint(region, kind, tex)
        left = not left


def _ground(rng: np.random.Generator, cv: _Canvas, horizon: int, ground: int) -> None:
    """Road or sidewalk, ONE texture and the same marks either way; terrain verges at the sides."""
    h, w = cv.h, cv.w
    gid = cv.new(ground)
    cv.paint(cv.yy >= horizon, ground, _jitter(rng, COLOURS[GROUND], 10), gid)
    # dashed marks in perspective: part of the ground in Cityscapes, marking--general in Mapillary
    mark, x_far, slope = (LANE if ground == ROAD else MARK), w * rng.uniform(0.4, 0.6), rng.uniform(-0.6, 0.6)
    depth = cv.yy - horizon - 2
    x = x_far + (depth + 2) * slope
    dashes = (depth >= 0) & (depth % 6 < 3) & (cv.xx >= x.astype(int)) & (cv.xx < x.astype(int) + 1 + depth // 30)
    cv.paint(dashes & (cv.yy < int(h * 0.94)), mark, COLOURS[LANE], gid)
    t = np.clip((cv.yy - horizon) / max(1, h - horizon), 0, 1)
    for side in (0, 1):
        if rng.random() < 0.85:
            width = w * (0.02 + rng.uniform(0.08, 0.16) * t)
            verge = (cv.yy > horizon + h * 0.03) & ((cv.xx < width) if side == 0 else (cv.xx >= w - width))
            cv.paint(verge, TERRAIN, _jitter(rng, COLOURS[TERRAIN], 10))


def _road_users(rng: np.random.Generator, cv: _Canvas, horizon: int) -> None:
    """Vehicles, persons and riders anywhere on the ground (never a local hint of road vs sidewalk)."""
    users: list[int] = []
    for kind, p, most in ((CAR, 0.85, 3), (PERSON, 0.85, 3), (TRUCK, 0.4, 1), (BUS, 0.4, 1),
                          (MOTORCYCLE, 0.5, 1), (BICYCLE, 0.55, 2)):
        if rng.random() < p:
            users += [kind] * int(rng.integers(1, most + 1))
    bottom = int(cv.h * 0.94)
    ys = np.sort(rng.uniform(horizon + cv.h * 0.08, bottom, len(users)))
    for kind, y in zip(rng.permutation(users), ys, strict=True):  # far first: near ones occlude
        s = 0.55 + 0.8 * (y - horizon) / (bottom - horizon)  # perspective
        DRAW[int(kind)](rng, cv, y, s)


def _vehicle(rng: np.random.Generator, cv: _Canvas, y: float, s: float, kind: int) -> None:
    h, w = cv.h, cv.w
    size = {CAR: (0.10, 0.15), TRUCK: (0.20, 0.20), BUS: (0.22, 0.28)}[kind]
    bh, bw = h * size[0] * s * rng.uniform(0.85, 1.15), w * size[1] * s * rng.uniform(0.85, 1.15)
    x0 = rng.uniform(0, w - bw)
    body = _jitter(rng, COLOURS[kind], 25)
    tex = np.broadcast_to(body, (h, w, 3)).copy()
    if kind == CAR:  # a narrower cabin on a lower body
        shape = cv.box(y - bh * 0.55, y, x0, x0 + bw) | cv.box(y - bh, y, x0 + bw * 0.2, x0 + bw * 0.8)
        tex[cv.box(y - bh * 0.9, y - bh * 0.55, x0 + bw * 0.25, x0 + bw * 0.75)] = WINDOW
    else:
        shape = cv.box(y - bh, y, x0, x0 + bw)
        if kind == TRUCK:  # blue cab in front of a white cargo box
            cab = x0 + bw * 0.3 if rng.random() < 0.5 else x0 + bw * 0.7
            tex[cv.xx >= cab if cab < x0 + bw / 2 else cv.xx < cab] = _jitter(rng, CARGO, 10)
        else:  # a band of windows
            tex[cv.box(y - bh * 0.85, y - bh * 0.55, x0, x0 + bw) & (cv.xx % 6 > 1)] = WINDOW
    r = max(1.5, bh * 0.18)
    for wx in (x0 + bw * 0.2, x0 + bw * 0.8):
        tex[cv.disc(y - r * 0.6, wx, r)] = WHEEL
        shape |= cv.disc(y - r * 0.6, wx, r) & (cv.yy < y + r * 0.4)
    cv.paint(shape, kind, tex)


def _human(rng: np.random.Generator, cv: _Canvas, y: float, x: float, height: float, kind: int) -> None:
    bw = max(DETAIL + 1, int(cv.w * 0.022 * height / (cv.h * 0.15) + rng.integers(0, 2)))
    head = max(DETAIL, bw - 2)
    body = cv.box(y - height + head, y, x - bw / 2, x + bw / 2)
    face = cv.box(y - height, y - height + head, x - head / 2, x + head / 2)
    tex = np.broadcast_to(_jitter(rng, COLOURS[kind if kind == PERSON else BICYCLIST], 20), (cv.h, cv.w, 3)).copy()
    tex[face] = SKIN
    cv.paint(body | face, kind, tex)


def _person(rng: np.random.Generator, cv: _Canvas, y: float, s: float) -> None:
    _human(rng, cv, y, rng.uniform(cv.w * 0.05, cv.w * 0.95), cv.h * 0.15 * s * rng.uniform(0.85, 1.15), PERSON)


def _two_wheeler(rng: np.random.Generator, cv: _Canvas, y: float, s: float, kind: int) -> None:
    """A motorcycle (solid, purple) or a bicycle (2 px cyan lines), ridden or parked."""
    r = max(DETAIL, cv.h * (0.04 if kind == MOTORCYCLE else 0.035) * s)
    x = rng.uniform(cv.w * 0.08, cv.w * 0.92)
    gap = r * rng.uniform(2.2, 2.8)
    xa, xb, cy = x - gap / 2, x + gap / 2, y - r
    if kind == MOTORCYCLE:
        tex = np.broadcast_to(_jitter(rng, COLOURS[MOTORCYCLE], 20), (cv.h, cv.w, 3)).copy()
        wheels = cv.disc(cy, xa, r) | cv.disc(cy, xb, r)
        tex[wheels] = WHEEL
        shape = wheels | cv.box(cy - r * 1.2, cy + r * 0.3, xa, xb + 1)
    else:
        tex = _jitter(rng, COLOURS[BICYCLE], 20)
        d_a = np.hypot(cv.yy - cy, cv.xx - xa)
        d_b = np.hypot(cv.yy - cy, cv.xx - xb)
        rims = (np.abs(d_a - r) < LINE / 2) | (np.abs(d_b - r) < LINE / 2)
        frame = cv.box(cy - r, cy - r + LINE, xa, xb + 1) | cv.box(cy - r, cy + 1, x, x + LINE)
        shape = rims | frame
    cv.paint(shape, kind, tex)
    if rng.random() < 0.75:  # a rider: Cityscapes 'rider'; Mapillary bicyclist / motorcyclist
        _human(rng, cv, cy - r * 0.2, x, cv.h * 0.1 * s, BICYCLIST if kind == BICYCLE else MOTORCYCLIST)


def _poles(rng: np.random.Generator, cv: _Canvas, horizon: int) -> None:
    """Poles 2-3 px wide from above the horizon to the ground, most carrying a small sign or light."""
    h, w = cv.h, cv.w
    for k in range(int(rng.integers(2, 5))):
        x, width = int(rng.uniform(w * 0.03, w * 0.97)), int(rng.integers(DETAIL - 1, DETAIL + 1))
        top, bottom = int(h * rng.uniform(0.12, 0.3)), int(rng.uniform(horizon + 4, h * 0.9))
        cv.paint(cv.box(top, bottom, x, x + width), POLE, _jitter(rng, COLOURS[POLE], 8))
        kind = (SIGN, LIGHT)[k] if k < 2 else (SIGN, LIGHT, None)[int(rng.integers(0, 3))]
        if kind == SIGN:
            s = int(rng.integers(2 * DETAIL - 1, 3 * DETAIL + 1))
            cv.paint(cv.box(top, top + s, x - s // 2, x - s // 2 + s), SIGN, _jitter(rng, COLOURS[SIGN], 15))
        elif kind == LIGHT:
            s = int(rng.integers(DETAIL + 1, 2 * DETAIL))
            tex = np.broadcast_to(np.asarray(COLOURS[LIGHT], np.float32), (h, w, 3)).copy()
            red = rng.random() < 0.5
            lamp = slice(top + 1, top + 1 + LINE) if red else slice(top + 2 * s - 1 - LINE, top + 2 * s - 1)
            tex[lamp, :] = (230, 40, 30) if red else (40, 230, 60)
            cv.paint(cv.box(top, top + 2 * s, x - s // 2, x - s // 2 + s), LIGHT, tex)


DRAW = {CAR: partial(_vehicle, kind=CAR), TRUCK: partial(_vehicle, kind=TRUCK), BUS: partial(_vehicle, kind=BUS),
        PERSON: _person, MOTORCYCLE: partial(_two_wheeler, kind=MOTORCYCLE),
        BICYCLE: partial(_two_wheeler, kind=BICYCLE)}


def _coarse(rng: np.random.Generator, cv: _Canvas, ids: dict[int, int]) -> np.ndarray:
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
    rng = _seed(seed, dataset, split, index)
    h, w = size
    if dataset == "mapillary":  # real Mapillary images come in many sizes: loaders must not assume one
        w = size[1] + int(rng.integers(-2, 3)) * (size[1] // 16)
    cv = _scene(rng, h, w)
    coarse = _coarse(rng, cv, CITYSCAPES_IDS) if dataset == "cityscapes" and split == "train_extra" else None
    return cv.cls, cv.img.astype(np.uint8), coarse


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
