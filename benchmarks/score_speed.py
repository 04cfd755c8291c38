"""P6 (issue 5): `hmsa score` vs the official cityscapesscripts evaluator on the same files:
identical mIoU, and how much faster. Ground truth is generated (the embedded dataset's Cityscapes
val split at the requested size); predictions are the ground truth with realistic mistakes.
Writes reports/benchmarks/score_speed.json.

    .venv/bin/python benchmarks/score_speed.py [--images 6] [--size 512 1024]
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


def make_files(tmp: Path, images: int, size: tuple[int, int]) -> tuple[list[Path], list[Path]]:
    from hmsa.data.synth import generate

    generate(tmp / "data", seed=1, cityscapes_counts={"val": images}, mapillary_counts={"training": 1},
             size=size)
    gts = sorted((tmp / "data/cityscapes/gtFine/val").rglob("*_gtFine_labelIds.png"))
    rng = np.random.default_rng(0)
    (tmp / "preds").mkdir()
    preds = []
    for g in gts:
        arr = np.asarray(Image.open(g)).copy()
        mask = rng.random(arr.shape) < 0.1
        arr[mask] = rng.choice([7, 8, 11, 17, 21, 23, 26, 4], size=int(mask.sum()))
        p = tmp / "preds" / g.name.replace("_gtFine_labelIds", "_pred")
        Image.fromarray(arr).save(p)
        preds.append(p)
    return gts, preds


def official(tmp: Path, gts: list[Path], preds: list[Path]) -> float:
    (tmp / "export").mkdir()
    os.environ.update(CITYSCAPES_DATASET=str(tmp), CITYSCAPES_RESULTS=str(tmp / "preds"),
                      CITYSCAPES_EXPORT_DIR=str(tmp / "export"))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.args
    args.evalInstLevelScore, args.quiet, args.JSONOutput = False, True, False
    return float(ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)["averageScoreClasses"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", type=int, nargs=2, default=[512, 1024])
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/score_speed.json")
    args = ap.parse_args()
    from hmsa.evaluation.score import score

    tmp = Path(tempfile.mkdtemp(prefix="hmsa-score-"))
    gts, preds = make_files(tmp, args.images, tuple(args.size))
    t0 = time.perf_counter()
    ours = score("cityscapes", tmp / "data/cityscapes/gtFine/val", tmp / "preds")["miou"]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = official(tmp, gts, preds)
    t_official = time.perf_counter() - t0
    result = {"images": len(gts), "size": args.size, "hmsa_seconds": t_ours, "official_seconds": t_official,
              "speedup": t_official / t_ours, "hmsa_miou": ours, "official_miou": theirs,
              "identical": abs(ours - theirs) < 1e-9, "target_speedup": 5.0}
    write_result(args.out, result)
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
