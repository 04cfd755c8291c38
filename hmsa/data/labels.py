"""Label tables: the official Cityscapes labelId -> trainId table (from ``cityscapesscripts``) and
the Mapillary Vistas v1.2 vocabulary (66 labels, the last one ``void--unlabeled`` not evaluated)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

IGNORE = 255
MAPILLARY_IGNORE = 65

# The 66 Mapillary Vistas v1.2 label names, in index order (a public fact of the dataset's config.json).
MAPILLARY_V12_NAMES = [
    "animal--bird", "animal--ground-animal", "construction--barrier--curb", "construction--barrier--fence",
    "construction--barrier--guard-rail", "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain", "construction--flat--curb-cut",
    "construction--flat--parking", "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane", "construction--flat--sidewalk",
    "construction--structure--bridge", "construction--structure--building", "construction--structure--tunnel",
    "human--person", "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "marking--crosswalk-zebra", "marking--general", "nature--mountain", "nature--sand", "nature--sky",
    "nature--snow", "nature--terrain", "nature--vegetation", "nature--water", "object--banner", "object--bench",
    "object--bike-rack", "object--billboard", "object--catch-basin", "object--cctv-camera",
    "object--fire-hydrant", "object--junction-box", "object--mailbox", "object--manhole",
    "object--phone-booth", "object--pothole", "object--street-light", "object--support--pole",
    "object--support--traffic-sign-frame", "object--support--utility-pole", "object--traffic-light",
    "object--traffic-sign--back", "object--traffic-sign--front", "object--trash-can",
    "object--vehicle--bicycle", "object--vehicle--boat", "object--vehicle--bus", "object--vehicle--car",
    "object--vehicle--caravan", "object--vehicle--motorcycle", "object--vehicle--on-rails",
    "object--vehicle--other-vehicle", "object--vehicle--trailer", "object--vehicle--truck",
    "object--vehicle--wheeled-slow", "void--car-mount", "void--ego-vehicle", "void--unlabeled",
]


def _mapillary_label(i: int, name: str) -> dict:
    # Colours: a fixed project palette for drawing (the official colours live in the real config.json,
    # which the loaders read; nothing but figures uses colours).
    rng = np.random.default_rng(i + 1)
    readable = name.split("--")[-1].replace("-", " ").capitalize()
    countable = name.startswith(("animal", "human", "object--vehicle")) or name in (
        "object--street-light", "object--support--pole", "object--traffic-light",
        "object--traffic-sign--front", "object--traffic-sign--back")
    return {"name": name, "readable": readable, "color": [int(c) for c in rng.integers(0, 256, 3)],
            "instances": bool(countable), "evaluate": name != "void--unlabeled"}


MAPILLARY_V12_LABELS = [_mapillary_label(i, n) for i, n in enumerate(MAPILLARY_V12_NAMES)]


def _cs_labels() -> list:
    from cityscapesscripts.helpers.labels import labels  # the official table

    return labels


def cityscapes_classes() -> list[str]:
    """The 19 evaluated classes in trainId order."""
    named = sorted((lab.trainId, lab.name) for lab in _cs_labels() if 0 <= lab.trainId < IGNORE)
    return [name for _, name in named]


CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]


def cityscapes_label_to_train_lut() -> np.ndarray:
    """uint8[256]: labelId -> trainId (255 = ignore, also for ids the table does not know)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for lab in _cs_labels():
        if 0 <= lab.id < 256 and 0 <= lab.trainId < IGNORE:
            lut[lab.id] = lab.trainId
    return lut


def cityscapes_train_to_label_lut() -> np.ndarray:
    """uint8[256]: trainId -> labelId, for writing predictions the way the benchmark expects."""
    lut = np.zeros(256, dtype=np.uint8)
    for lab in _cs_labels():
        if 0 <= lab.trainId < IGNORE and lab.id >= 0:
            lut[lab.trainId] = lab.id
    return lut


def read_mapillary_config(root: Path) -> list[dict]:
    """``labels`` of a Mapillary Vistas ``config.json``."""
    from hmsa.data.errors import DataError, MissingDataError

    path = Path(root) / "config.json"
    try:
        labels = json.loads(path.read_text())["labels"]
    except FileNotFoundError as exc:
        raise MissingDataError(path, "Mapillary config.json not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataError(path, "not a Mapillary config.json (needs a 'labels' list)") from exc
    if not isinstance(labels, list) or not all(isinstance(x, dict) and "name" in x for x in labels):
        raise DataError(path, "'labels' must be a list of objects with a 'name'")
    return labels
