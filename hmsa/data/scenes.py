"""The generated street scenes of the embedded dataset, drawn as abstract classes (mapped to each
dataset's ids by :mod:`hmsa.data.synth`, which writes them in the real on-disk formats).

Every scene holds most of the 19 Cityscapes evaluation classes (each class is in at least ~40 % of
the default val images), each with a cue a small CNN can learn, and the two failure modes of the
paper's Figure 1 (section 1) — scale matters both ways:

- *fine detail, needs a HIGH scale* (lost at 0.5): poles 2-3 px wide; traffic signs (yellow squares,
  5-9 px) and traffic lights (black boxes with one lit 2-row lamp) on top of them; bicycles drawn with
  2 px cyan lines (frame and wheel rims); fences, a 1 px diagonal lattice over whatever is behind it (its
  label covers the gaps, as in Cityscapes); dashed lane marks (road in Cityscapes, ``marking--general``
  in Mapillary).
- *context*, which in the paper needs a LOW scale (at 2.0 the receptive field sees relatively less; at
  128×256 our models see the whole picture at every scale, so here 2.0 does best in the shadows too, as
  ``benchmarks/scale_cases.py`` measures): every street has a road in the middle (dark asphalt, dashed
  lane marks) between two sidewalks (lighter paving with joints, a pale kerb along the road), as nearly
  every Cityscapes image has both. In most scenes a deep building shadow, a quarter to 40 % of the image
  tall, falls across the street; in it asphalt and paving look the same (no joints, kerbs or marks
  show), and only the kerbs outside it, far above and below, tell which part is road. (A nearer kind of
  context: Mapillary's bicyclist vs motorcyclist look alike and differ by the vehicle under them.) Why
  both classes in one image, each with a local cue: the paper's RMI loss takes its covariances per image
  and per class, so a class absent from an image gets no gradient from it; when a whole scene's ground
  was road or sidewalk as only its facades said, 10 of 12 coarse-label runs with RMI called the two one
  class (see the README).

The other elements (cue in brackets): sky (light blue gradient, top), building (blue-grey or red-brick
facade with a window grid), wall (beige blocks with dark joints, low, at the horizon), vegetation (mottled
green discs), terrain (olive verges widening towards the camera), person (magenta body, skin head), rider
(azure shirt on a bike), car (red body, dark cabin and wheels), truck (blue cab, white cargo box),
bus (amber box with a window band), train (teal, long, window band, at the horizon), motorcycle
(purple body on two dark wheels), ego vehicle (dark band at the bottom, ignored). Road users are
placed in depth order with perspective (far ones small, near ones large).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from hmsa.data.labels import MAPILLARY_V12_NAMES

# Abstract scene classes, mapped to each dataset's ids below (CITYSCAPES_IDS, MAPILLARY_IDS).
(SKY, BUILDING, ROAD, SIDEWALK, VEG, TERRAIN, POLE, SIGN, LIGHT, PERSON, CAR, LANE, EGO, WALL, FENCE,
 BICYCLIST, MOTORCYCLIST, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(22)
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
           EGO: (25, 25, 30), ROAD: (95, 95, 102), SIDEWALK: (160, 148, 135), WALL: (180, 175, 160),
           FENCE: (210, 160, 50), BICYCLIST: (30, 120, 255), CAR: (190, 40, 40), TRUCK: (40, 80, 170),
           BUS: (240, 170, 20), TRAIN: (30, 150, 140), MOTORCYCLE: (120, 40, 160), BICYCLE: (0, 210, 210)}
SKIN, WINDOW, WHEEL, CARGO = (225, 180, 150), (50, 60, 80), (20, 20, 20), (215, 215, 200)
KERB, SHADE = (205, 205, 198), (58, 57, 60)  # SHADE: the ground in a deep shadow, road or sidewalk alike
FACADES = ((95, 105, 150), (165, 80, 60))  # blue-grey, red brick
SHADOW = (0.25, 0.4)  # height of the shadow across the street, fraction of the image height
# Cityscapes labelIds (the official ids: road 7, sidewalk 8, building 11, wall 12, ...; ego vehicle 1).
CITYSCAPES_IDS = {SKY: 23, BUILDING: 11, ROAD: 7, SIDEWALK: 8, VEG: 21, TERRAIN: 22, POLE: 17, SIGN: 20,
                  LIGHT: 19, PERSON: 24, CAR: 26, LANE: 7, EGO: 1, WALL: 12, FENCE: 13, BICYCLIST: 25,
                  MOTORCYCLIST: 25, TRUCK: 27, BUS: 28, TRAIN: 31, MOTORCYCLE: 32, BICYCLE: 33}
_MV = {n: i for i, n in enumerate(MAPILLARY_V12_NAMES)}
_MV_NAMES = {SKY: "nature--sky", BUILDING: "construction--structure--building", ROAD: "construction--flat--road",
             SIDEWALK: "construction--flat--sidewalk", VEG: "nature--vegetation", TERRAIN: "nature--terrain",
             POLE: "object--support--pole", SIGN: "object--traffic-sign--front", LIGHT: "object--traffic-light",
             PERSON: "human--person", CAR: "object--vehicle--car", LANE: "marking--general",
             EGO: "void--ego-vehicle", WALL: "construction--barrier--wall", FENCE: "construction--barrier--fence",
             BICYCLIST: "human--rider--bicyclist", MOTORCYCLIST: "human--rider--motorcyclist",
             TRUCK: "object--vehicle--truck", BUS: "object--vehicle--bus", TRAIN: "object--vehicle--on-rails",
             MOTORCYCLE: "object--vehicle--motorcycle", BICYCLE: "object--vehicle--bicycle"}
MAPILLARY_IDS = {c: _MV[n] for c, n in _MV_NAMES.items()}


class Canvas:
    """Class map, image and the map of visible non-thin elements (what a coarse annotator outlines)."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.yy, self.xx = np.mgrid[:h, :w]
        self.cls = np.full((h, w), SKY, np.uint8)
        self.img = np.zeros((h, w, 3), np.float32)
        self.inst = np.zeros((h, w), np.int32)  # element id; thin things do not change it
        self.kinds = [SKY]  # class of each element id
        self.thin: list[np.ndarray] = []  # masks of the thin things
        self.shade = np.zeros((h, w), bool)  # the ground in deep shadow (no local road/sidewalk cue)

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


def draw(rng: np.random.Generator, h: int, w: int) -> Canvas:
    """One scene, drawn back to front."""
    cv = Canvas(h, w)
    horizon = int(h * rng.uniform(0.40, 0.50))
    sky = np.asarray(COLOURS[SKY], np.float32) + (cv.yy / horizon)[..., None] * 40  # paler at the horizon
    cv.img[:] = sky
    _background(rng, cv, horizon)
    _ground(rng, cv, horizon)
    _road_users(rng, cv, horizon)
    _poles(rng, cv, horizon)
    cv.paint(cv.yy >= int(h * 0.94), EGO, COLOURS[EGO])
    cv.img += rng.normal(0, 10, cv.img.shape).astype(np.float32)
    cv.img *= rng.uniform(0.85, 1.15)
    cv.img = cv.img.clip(0, 255)
    return cv


def _background(rng: np.random.Generator, cv: Canvas, horizon: int) -> None:
    """Facades, trees, a train, a wall and a fence along the horizon."""
    h, w = cv.h, cv.w
    windows = ((cv.yy % 6) < 3) & ((cv.xx % 7) < 3)
    for x0, x1 in ((0, w * rng.uniform(0.3, 0.42)), (w * rng.uniform(0.58, 0.7), w)):
        fac = _jitter(rng, FACADES[int(rng.integers(0, len(FACADES)))], 8)
        facade = np.where(windows[..., None], fac * 0.55, fac)
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


def _ground(rng: np.random.Generator, cv: Canvas, horizon: int) -> None:
    """A road between two sidewalks in perspective, in most scenes a deep shadow across them, terrain verges."""
    h, w = cv.h, cv.w
    below = cv.yy >= horizon
    t = np.clip((cv.yy - horizon) / max(1, h - horizon), 0, 1)  # 0 at the horizon, 1 at the bottom
    vx = w * rng.uniform(0.42, 0.58)  # where the street meets the horizon
    kerbs = [vx + side * w * 0.04 + t * (w * rng.uniform(*ends) - vx - side * w * 0.04)
             for side, ends in ((-1, (0.05, 0.3)), (1, (0.7, 0.95)))]
    kx = [k.astype(int) for k in kerbs]
    road = below & (cv.xx > kx[0]) & (cv.xx < kx[1])
    shade = np.zeros((h, w), bool)  # a building's shadow across the whole street
    if rng.random() < 0.85:  # tall enough that its middle is far from the kerbs outside it
        y0 = rng.uniform(horizon + h * 0.03, h * 0.6)
        tilt = rng.uniform(-0.15, 0.15) * (cv.xx - w / 2)
        shade = below & (cv.yy >= y0 + tilt) & (cv.yy < y0 + h * rng.uniform(*SHADOW) + tilt)
    rid = cv.new(ROAD)
    cv.paint(road, ROAD, _jitter(rng, COLOURS[ROAD], 10), rid)
    joints = (cv.yy % 4 == 0) | ((cv.xx + 3 * ((cv.yy // 4) % 2)) % 6 == 0)  # staggered paving slabs
    for part, k in ((below & (cv.xx <= kx[0]), kx[0]), (below & (cv.xx >= kx[1]), kx[1])):
        pave = _jitter(rng, COLOURS[SIDEWALK], 10)
        tex = np.where(joints[..., None], pave * 0.8, pave)
        tex[cv.xx == k] = KERB  # the kerb belongs to the sidewalk, as in Cityscapes
        cv.paint(part, SIDEWALK, tex)
    # dashed lane marks in perspective: part of the road in Cityscapes, marking--general in Mapillary
    x = (kerbs[0] + (kerbs[1] - kerbs[0]) * rng.uniform(0.35, 0.65)).astype(int)
    depth = cv.yy - horizon - 2
    dashes = road & (depth >= 0) & (depth % 6 < 3) & (cv.xx >= x) & (cv.xx < x + 1 + depth // 30)
    cv.paint(dashes & ~shade & (cv.yy < int(h * 0.94)), LANE, COLOURS[LANE], rid)
    cv.img[shade] = _jitter(rng, SHADE, 4)  # joints, kerbs and marks vanish: only the labels stay
    cv.shade = shade
    for side in (0, 1):
        if rng.random() < 0.85:
            width = w * (0.02 + rng.uniform(0.08, 0.16) * t)
            verge = (cv.yy > horizon + h * 0.03) & ((cv.xx < width) if side == 0 else (cv.xx >= w - width))
            cv.paint(verge, TERRAIN, _jitter(rng, COLOURS[TERRAIN], 10))


def _road_users(rng: np.random.Generator, cv: Canvas, horizon: int) -> None:
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


def _vehicle(rng: np.random.Generator, cv: Canvas, y: float, s: float, kind: int) -> None:
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


def _human(rng: np.random.Generator, cv: Canvas, y: float, x: float, height: float, kind: int) -> None:
    bw = max(DETAIL + 1, int(cv.w * 0.022 * height / (cv.h * 0.15) + rng.integers(0, 2)))
    head = max(DETAIL, bw - 2)
    body = cv.box(y - height + head, y, x - bw / 2, x + bw / 2)
    face = cv.box(y - height, y - height + head, x - head / 2, x + head / 2)
    tex = np.broadcast_to(_jitter(rng, COLOURS[kind if kind == PERSON else BICYCLIST], 20), (cv.h, cv.w, 3)).copy()
    tex[face] = SKIN
    cv.paint(body | face, kind, tex)


def _person(rng: np.random.Generator, cv: Canvas, y: float, s: float) -> None:
    _human(rng, cv, y, rng.uniform(cv.w * 0.05, cv.w * 0.95), cv.h * 0.15 * s * rng.uniform(0.85, 1.15), PERSON)


def _two_wheeler(rng: np.random.Generator, cv: Canvas, y: float, s: float, kind: int) -> None:
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


def _poles(rng: np.random.Generator, cv: Canvas, horizon: int) -> None:
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

