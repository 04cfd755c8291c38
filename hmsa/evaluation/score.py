"""``hmsa score``: score a folder of prediction PNGs against ground truth, the way the official
benchmarks do (Cityscapes: predictions are labelIds, as the benchmark server expects; Mapillary:
class indices). Same numbers as ``cityscapesscripts``' evaluator — it is the test oracle — but
vectorised: one bincount per image.

Official semantics: a pixel whose ground truth is ignored does not count; a prediction of a class
that is not evaluated is simply wrong (a false negative for the true class, nobody's false positive).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from hmsa.data.labels import IGNORE, MAPILLARY_IGNORE, cityscapes_label_to_train_lut
from hmsa.io import atomic_write_json

_CS_KEY = re.compile(r"([A-Za-z]+_\d{6}_\d{6})")


def _pairs(gt_files: list[Path], pred_dir: Path, key: Callable[[Path], str | None]) -> list[tuple[Path, Path]]:
    preds: dict[str, Path] = {}
    for p in sorted(Path(pred_dir).rglob("*.png")):
        k = key(p)
        if k is None:
            continue
        if k in preds:
            raise ValueError(f"{pred_dir}: two predictions for {k}: {preds[k].name}, {p.name}")
        preds[k] = p
    pairs = []
    for g in gt_files:
        k = key(g)
        if k not in preds:
            raise FileNotFoundError(f"{pred_dir}: no prediction for {g.name} (looked for *{k}*.png)")
        pairs.append((g, preds[k]))
    return pairs


def _accumulate(pairs: list[tuple[Path, Path]], lut: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C+1) counts: rows = ground-truth class, columns = predicted class, last = not evaluated.

    ``lut`` maps raw ids to 0..C-1, or to C for ids that are not evaluated. One small-integer code per
    pixel and one bincount: no sort, no per-value Python loop."""
    c1 = num_classes + 1
    code = lut.astype(np.uint16)
    conf = np.zeros(c1 * c1, np.int64)
    for g, p in pairs:
        gt = np.asarray(Image.open(g))
        pred = np.asarray(Image.open(p))
        if pred.ndim != 2 or pred.shape != gt.shape:
            raise ValueError(f"{p}: prediction must be a single-channel image of size {gt.shape[::-1]}, "
                             f"got shape {pred.shape}")
        conf += np.bincount((code[gt] * c1 + code[pred]).ravel(), minlength=c1 * c1)
    # the last row is ground truth that is not evaluated: it counts for nobody
    return conf.reshape(c1, c1)[:num_classes]


def _summarize(conf: np.ndarray, names: list[str]) -> dict:
    """IoU from the (C, C+1) matrix: a prediction of a non-evaluated class (last column) is a false
    negative of the true class and nobody's false positive."""
    c = conf.shape[0]
    square, misses = conf[:, :c], conf[:, c]
    tp = np.diag(square).astype(np.float64)
    denom = square.sum(1) + misses + square.sum(0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(denom > 0, tp / denom, np.nan)
    valid = ~np.isnan(iou)
    total = float(conf.sum())
    return {"miou": float(iou[valid].mean()) if valid.any() else 0.0,
            "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0, "pixels": int(total)}


def score_cityscapes(gt_dir: Path, pred_dir: Path) -> dict:
    from hmsa.data.labels import CITYSCAPES_CLASSES

    gts = sorted(Path(gt_dir).rglob("*_gtFine_labelIds.png"))
    if not gts:
        raise FileNotFoundError(f"{gt_dir}: no *_gtFine_labelIds.png ground truth")

    def key(p: Path) -> str | None:
        m = _CS_KEY.search(p.name)
        return m.group(1) if m else None

    lut = cityscapes_label_to_train_lut()  # labelIds -> trainIds for GT and predictions alike
    lut[lut == IGNORE] = 19
    conf = _accumulate(_pairs(gts, pred_dir, key), lut, 19)
    return {"dataset": "cityscapes", "images": len(gts), **_summarize(conf, CITYSCAPES_CLASSES)}


def score_mapillary(gt_dir: Path, pred_dir: Path) -> dict:
    from hmsa.data.labels import MAPILLARY_V12_LABELS

    gts = sorted(Path(gt_dir).rglob("*.png"))
    if not gts:
        raise FileNotFoundError(f"{gt_dir}: no ground-truth *.png labels")
    lut = np.arange(256, dtype=np.uint8)
    lut[MAPILLARY_IGNORE:] = MAPILLARY_IGNORE  # 65 (void--unlabeled) and beyond are not evaluated
    names = [lab["readable"] for lab in MAPILLARY_V12_LABELS[:MAPILLARY_IGNORE]]
    conf = _accumulate(_pairs(gts, pred_dir, lambda p: p.stem), lut, MAPILLARY_IGNORE)
    return {"dataset": "mapillary", "images": len(gts), **_summarize(conf, names)}


def score(dataset: str, gt_dir: Path, pred_dir: Path, out: Path | None = None) -> dict:
    """Score and (optionally) write ``{"miou": 0..1, "per_class": {name: iou}, ...}`` to ``out``."""
    if not Path(pred_dir).is_dir():
        raise FileNotFoundError(f"{pred_dir}: prediction folder not found")
    if dataset == "cityscapes":
        result = score_cityscapes(Path(gt_dir), Path(pred_dir))
    elif dataset == "mapillary":
        result = score_mapillary(Path(gt_dir), Path(pred_dir))
    else:
        raise ValueError(f"unknown dataset {dataset!r} (cityscapes or mapillary)")
    if out is not None:
        atomic_write_json(Path(out), result)
    return result
