"""``hmsa score``: score a folder of prediction PNGs against ground truth, the way the official
benchmarks do (Cityscapes: predictions are labelIds, as the benchmark server expects; Mapillary:
class indices). Same numbers as ``cityscapesscripts``' evaluator — it is the test oracle — but
vectorised: one bincount per image.

Official semantics: a pixel whose ground truth is ignored does not count; a prediction of a class
that is not evaluated is simply wrong (a false negative for the true class, nobody's false positive).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from hmsa.data.errors import DataError, MissingDataError, read_file
from hmsa.data.labels import IGNORE, MAPILLARY_IGNORE, cityscapes_label_to_train_lut
from hmsa.errors import BadInputError
from hmsa.io import atomic_write_json

try:  # a declared dependency; Pillow gives the same arrays, only slower
    from imagecodecs import png_decode as _png_decode
except ImportError:  # pragma: no cover
    _png_decode = None

_ROWS = 128  # image rows counted at a time
_MIN_PER_WORKER = 4  # below this a process pool costs more than it saves
CITYSCAPES_IDS = 34  # labelIds 0..33 (the official evaluator's table)
MAPILLARY_IDS = 66  # v1.2 class indices 0..65

_CS_KEY = re.compile(r"([A-Za-z]+_\d{6}_\d{6})")


def _pairs(gt_files: list[Path], pred_dir: Path, key: Callable[[Path], str | None]) -> list[tuple[Path, Path]]:
    """One prediction per ground-truth file, and no prediction left over: a prediction of an image that
    is not in the ground truth (another split, a stray file) means the two folders do not match, and
    scoring only their overlap would report a number for the wrong set without a word."""
    preds: dict[str, Path] = {}
    for p in sorted(Path(pred_dir).rglob("*.png")):
        k = key(p)
        if k is None:
            raise DataError(p, "a prediction whose name pairs with no ground truth (expected the image's "
                               "name, e.g. frankfurt_000000_000019_*.png)")
        if k in preds:
            raise DataError(pred_dir, f"two predictions for {k}: {preds[k].name}, {p.name}")
        preds[k] = p
    pairs = []
    for g in gt_files:
        k = key(g)
        if k not in preds:
            raise MissingDataError(pred_dir, f"no prediction for {g.name} (looked for *{k}*.png)")
        pairs.append((g, preds.pop(k)))
    if preds:
        extra = sorted(preds.values())
        raise DataError(extra[0], f"a prediction with no ground truth ({len(extra)} such prediction(s)): "
                                  "the prediction folder holds images of another split or set")
    return pairs


def _decode(path: Path, kind: str) -> np.ndarray:
    """A PNG as an array, the way Pillow's ``np.asarray(Image.open(...))`` gives it (what the official
    evaluator reads). 8-bit greyscale PNGs (every labelIds file) go through imagecodecs' libpng, about
    twice as fast as Pillow; anything else (palette, RGB, 16-bit) through Pillow, which keeps palette
    indices instead of expanding them to colours."""

    def read(p: Path) -> np.ndarray:
        data = p.read_bytes()
        # IHDR: bit depth at byte 24, colour type at byte 25 (0 = greyscale)
        if _png_decode is not None and data[:8] == b"\x89PNG\r\n\x1a\n" and data[24:26] == b"\x08\x00":
            return _png_decode(data)
        return np.asarray(Image.open(io.BytesIO(data)))

    return read_file(Path(path), kind, read)


def _pair_counts(gt_path: Path, pred_path: Path, gt_ids: int, pred_ids: int) -> np.ndarray:
    """uint8 ground truth x uint8 prediction -> 65536 counts of (gt << 8 | pred): one pass, no sort."""
    gt = _decode(gt_path, "ground-truth label")
    pred = _decode(pred_path, "prediction")
    if gt.ndim != 2 or gt.dtype != np.uint8:
        raise DataError(gt_path, f"ground truth must be a single-channel 8-bit PNG, got {gt.shape} {gt.dtype}")
    if pred.ndim != 2 or pred.dtype != np.uint8:
        raise DataError(pred_path, f"prediction must be a single-channel 8-bit PNG of ids, got shape "
                                   f"{pred.shape} {pred.dtype}")
    if pred.shape != gt.shape:
        raise DataError(pred_path, f"prediction is {pred.shape[1]}x{pred.shape[0]} (WxH), its ground truth "
                                   f"{gt_path.name} is {gt.shape[1]}x{gt.shape[0]}")
    counts = np.zeros(65536, np.int64)
    for r in range(0, gt.shape[0], _ROWS):  # in bands: bincount's int64 copy stays in cache
        code = gt[r:r + _ROWS].astype(np.uint16) << 8
        code |= pred[r:r + _ROWS]
        counts += np.bincount(code.ravel(), minlength=65536)
    counts = counts.reshape(256, 256)
    if counts[gt_ids:].any():
        raise DataError(gt_path, f"ground-truth values {np.nonzero(counts[gt_ids:].sum(1))[0][:8] + gt_ids} "
                                 f"are not ids of this dataset (0..{gt_ids - 1})")
    if counts[:, pred_ids:].any():
        raise DataError(pred_path, f"predicted values {np.nonzero(counts[:, pred_ids:].sum(0))[0][:8] + pred_ids} "
                                   f"are not ids of this dataset (0..{pred_ids - 1})")
    return counts


def _chunk_counts(job: tuple[list[tuple[Path, Path]], int, int]) -> np.ndarray:
    pairs, gt_ids, pred_ids = job
    total = np.zeros((256, 256), np.int64)
    for g, p in pairs:
        total += _pair_counts(g, p, gt_ids, pred_ids)
    return total


def _raw_counts(pairs: list[tuple[Path, Path]], gt_ids: int, pred_ids: int, workers: int) -> np.ndarray:
    """(256, 256) counts over all pairs: raw ground-truth id x raw predicted id. Decoding and counting
    release the GIL (libpng through imagecodecs, numpy), so threads share the work with no process
    start-up or copying; with a handful of images one thread is quicker."""
    workers = max(1, min(workers, len(pairs) // _MIN_PER_WORKER))
    if workers == 1:
        return _chunk_counts((pairs, gt_ids, pred_ids))
    with ThreadPoolExecutor(workers) as pool:
        jobs = [(pairs[w::workers], gt_ids, pred_ids) for w in range(workers)]
        return np.sum(list(pool.map(_chunk_counts, jobs)), axis=0)


def _fold(raw: np.ndarray, lut: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C+1) counts: rows = ground-truth class, columns = predicted class, last = not evaluated.

    ``lut`` maps raw ids to 0..C-1, or to C for ids that are not evaluated; the 256x256 raw matrix is
    folded into classes with a one-hot product, so nothing per pixel depends on the dataset."""
    onehot = np.zeros((256, num_classes + 1), np.int64)
    onehot[np.arange(256), np.minimum(lut, num_classes)] = 1
    conf = onehot.T @ raw @ onehot
    # the last row is ground truth that is not evaluated: it counts for nobody
    return conf[:num_classes]


def _refuse_train_ids(raw: np.ndarray, lut: np.ndarray, pred_dir: Path) -> None:
    """Cityscapes predictions must be labelIds (what the benchmark reads). trainIds 0..18 are valid
    labelIds too, so they would be scored as mIoU ~0 without a word: compare how many evaluated pixels
    agree with the ground truth when the predictions are read as labelIds and as trainIds, and refuse
    when trainIds fit clearly better."""
    gt_train = lut[:CITYSCAPES_IDS]  # ground-truth labelId -> trainId (19 = not evaluated)
    evaluated = raw[:CITYSCAPES_IDS][gt_train < 19]
    total = evaluated.sum()
    if total == 0:
        return
    t = gt_train[gt_train < 19]
    as_label = sum(evaluated[i, :CITYSCAPES_IDS][lut[:CITYSCAPES_IDS] == c].sum() for i, c in enumerate(t))
    as_train = sum(evaluated[i, c] for i, c in enumerate(t))
    if as_train >= 0.2 * total and as_train > 2 * as_label:
        raise DataError(pred_dir, f"predictions look like trainIds, not labelIds ({100 * as_train / total:.0f} % "
                                  f"of pixels agree with the ground truth read as trainIds, "
                                  f"{100 * as_label / total:.0f} % as labelIds): write labelIds")


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
    # summed class by class in order, like the official evaluator: the same float, to the last bit
    miou = sum(float(v) for v in iou[valid]) / int(valid.sum()) if valid.any() else 0.0
    return {"miou": miou,
            "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0, "pixels": int(total)}


def score_cityscapes(gt_dir: Path, pred_dir: Path, workers: int = 1) -> dict:
    from hmsa.data.labels import CITYSCAPES_CLASSES

    gts = sorted(Path(gt_dir).rglob("*_gtFine_labelIds.png"))
    if not gts:
        raise MissingDataError(gt_dir, "no *_gtFine_labelIds.png ground truth")

    def key(p: Path) -> str | None:
        m = _CS_KEY.search(p.name)
        return m.group(1) if m else None

    lut = cityscapes_label_to_train_lut()  # labelIds -> trainIds for GT and predictions alike
    lut[lut == IGNORE] = 19
    raw = _raw_counts(_pairs(gts, pred_dir, key), CITYSCAPES_IDS, CITYSCAPES_IDS, workers)
    _refuse_train_ids(raw, lut, Path(pred_dir))
    conf = _fold(raw, lut, 19)
    return {"dataset": "cityscapes", "images": len(gts), **_summarize(conf, CITYSCAPES_CLASSES)}


def score_mapillary(gt_dir: Path, pred_dir: Path, workers: int = 1) -> dict:
    from hmsa.data.labels import MAPILLARY_V12_LABELS

    gts = sorted(Path(gt_dir).rglob("*.png"))
    if not gts:
        raise MissingDataError(gt_dir, "no ground-truth *.png labels")
    lut = np.arange(256, dtype=np.uint8)
    lut[MAPILLARY_IGNORE:] = MAPILLARY_IGNORE  # 65 (void--unlabeled) and beyond are not evaluated
    names = [lab["readable"] for lab in MAPILLARY_V12_LABELS[:MAPILLARY_IGNORE]]
    raw = _raw_counts(_pairs(gts, pred_dir, lambda p: p.stem), MAPILLARY_IDS, MAPILLARY_IDS, workers)
    conf = _fold(raw, lut, MAPILLARY_IGNORE)
    return {"dataset": "mapillary", "images": len(gts), **_summarize(conf, names)}


def score(dataset: str, gt_dir: Path, pred_dir: Path, out: Path | None = None, workers: int | None = None) -> dict:
    """Score and (optionally) write ``{"miou": 0..1, "per_class": {name: iou}, ...}`` to ``out``.
    ``workers``: decoding threads (default: the machine's cores)."""
    workers = workers or os.cpu_count() or 1
    if not Path(pred_dir).is_dir():
        raise MissingDataError(pred_dir, "prediction folder not found")
    if dataset == "cityscapes":
        result = score_cityscapes(Path(gt_dir), Path(pred_dir), workers)
    elif dataset == "mapillary":
        result = score_mapillary(Path(gt_dir), Path(pred_dir), workers)
    else:
        raise BadInputError(f"unknown dataset {dataset!r} (cityscapes or mapillary)")
    if out is not None:
        atomic_write_json(Path(out), result)
    return result
