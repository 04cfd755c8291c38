"""P6 (issue 5): `hmsa score` vs the official cityscapesscripts evaluator on the same files:
identical mIoU, and how much faster. Ground truth is generated (the embedded dataset's Cityscapes
val split at the requested size); predictions are the ground truth with realistic mistakes.
Writes reports/benchmarks/score_speed.json.

Both read the same PNG files from disk; ours uses imagecodecs' PNG decoder and one process per core.

    .venv/bin/python benchmarks/score_speed.py [--images 24] [--size 1024 2048]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402


def _mistakes(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A model-like prediction: boundaries off by a few pixels, and blobs of wrong (some not evaluated)
    classes. Spatially coherent like real predictions, so the PNGs compress like real ones (per-pixel
    salt noise would make every file several times larger than a real prediction)."""
    h, w = gt.shape
    pred = np.roll(gt, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
    for _ in range(40):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        bh, bw = int(rng.integers(h // 60, h // 8)), int(rng.integers(w // 60, w // 8))
        pred[y:y + bh, x:x + bw] = rng.choice([7, 8, 11, 17, 21, 23, 26, 4])
    return pred


def make_files(tmp: Path, images: int, size: tuple[int, int]) -> tuple[list[Path], list[Path]]:
    from hmsa.data.synth import generate

    generate(tmp / "data", seed=1, cityscapes_counts={"val": images}, mapillary_counts={"training": 1},
             size=size)
    gts = sorted((tmp / "data/cityscapes/gtFine/val").rglob("*_gtFine_labelIds.png"))
    rng = np.random.default_rng(0)
    (tmp / "preds").mkdir()
    preds = []
    for g in gts:
        arr = _mistakes(np.asarray(Image.open(g)), rng)
        p = tmp / "preds" / g.name.replace("_gtFine_labelIds", "_pred")
        Image.fromarray(arr).save(p)
        preds.append(p)
    return gts, preds


def import_official(tmp: Path) -> object:
    """The evaluator module; it reads its environment at import time (imported before any timing)."""
    (tmp / "export").mkdir(exist_ok=True)
    os.environ.update(CITYSCAPES_DATASET=str(tmp), CITYSCAPES_RESULTS=str(tmp / "preds"),
                      CITYSCAPES_EXPORT_DIR=str(tmp / "export"))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    return ev


def official(ev: object, gts: list[Path], preds: list[Path]) -> float:
    args = ev.args  # type: ignore[attr-defined]
    args.evalInstLevelScore, args.quiet, args.JSONOutput = False, True, False
    scores = ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)  # type: ignore[attr-defined]
    return float(scores["averageScoreClasses"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, nargs=2, default=[1024, 2048])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best of each counts")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/score_speed.json")
    args = ap.parse_args()
    from hmsa.evaluation.score import score

    tmp = Path(tempfile.mkdtemp(prefix="hmsa-score-"))
    gts, preds = make_files(tmp, args.images, tuple(args.size))
    ev = import_official(tmp)
    t_ours, t_official = [], []
    for _ in range(args.repeats):  # interleaved, best of each: the least disturbed run of both
        t0 = time.perf_counter()
        ours = score("cityscapes", tmp / "data/cityscapes/gtFine/val", tmp / "preds")["miou"]
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = official(ev, gts, preds)
        t_official.append(time.perf_counter() - t0)
    t_ours_best, t_official_best = min(t_ours), min(t_official)
    result = {"images": len(gts), "size": args.size, "repeats": args.repeats, "hmsa_seconds": t_ours_best,
              "official_seconds": t_official_best, "speedup": t_official_best / t_ours_best,
              "hmsa_miou": ours, "official_miou": theirs,
              "abs_diff": abs(ours - theirs), "identical": abs(ours - theirs) < 1e-9, "target_speedup": 5.0,
              "cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    write_result(args.out, result)
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
