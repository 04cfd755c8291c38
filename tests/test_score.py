"""``hmsa score`` gives the official Cityscapes evaluator's numbers (the evaluator is the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmsa.cli import main
from hmsa.evaluation.score import score


def _predictions(gt_files: list[Path], out: Path, seed: int) -> list[Path]:
    """GT labelIds with realistic mistakes: wrong evaluated classes, non-evaluated ids, void."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    preds = []
    for g in gt_files:
        gt = np.asarray(Image.open(g)).copy()
        noise = rng.random(gt.shape)
        gt[noise < 0.15] = rng.choice([7, 8, 11, 17, 20, 21, 23, 24, 26, 33], size=int((noise < 0.15).sum()))
        gt[(noise > 0.97)] = 4  # "static": not an evaluated class
        gt[(noise > 0.95) & (noise <= 0.97)] = 0
        p = out / g.name.replace("_gtFine_labelIds.png", "_pred.png")
        Image.fromarray(gt).save(p)
        preds.append(p)
    return preds


def _official(preds: list[Path], gts: list[Path], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    export = tmp / "export"
    export.mkdir()
    # the evaluator reads these at import time
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(tmp / "preds"))
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(export))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.args
    args.evalInstLevelScore = False  # its iIoU path crashes on numpy >= 2.4 (np.in1d)
    args.quiet = True
    args.JSONOutput = False
    return ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)


def test_matches_the_official_evaluator(embedded_data: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    gt_dir = embedded_data / "cityscapes/gtFine/val"
    gts = sorted(gt_dir.rglob("*_gtFine_labelIds.png"))
    preds = _predictions(gts, tmp_path / "preds", seed=0)
    ours = score("cityscapes", gt_dir, tmp_path / "preds", tmp_path / "score.json")
    official = _official(preds, gts, tmp_path, monkeypatch)
    assert ours["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-9)
    assert len(ours["per_class"]) == 19
    for name in ours["per_class"]:
        iou = official["classScores"][name]
        if np.isnan(iou):
            assert ours["per_class"][name] is None
        else:
            assert ours["per_class"][name] == pytest.approx(iou, abs=1e-9)
    assert json.loads((tmp_path / "score.json").read_text())["miou"] == ours["miou"]


def test_mapillary_scoring(embedded_data: Path, tmp_path: Path) -> None:
    gt_dir = embedded_data / "mapillary/validation/v1.2/labels"
    (tmp_path / "p").mkdir()
    for g in gt_dir.glob("*.png"):
        Image.open(g).save(tmp_path / "p" / g.name)  # perfect predictions
    result = score("mapillary", gt_dir, tmp_path / "p")
    assert result["miou"] == 1.0 and len(result["per_class"]) == 65


def test_missing_prediction_is_one_clear_line(embedded_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    code = main(["score", "--dataset", "cityscapes", "--gt", str(embedded_data / "cityscapes/gtFine/val"),
                 "--pred", str(tmp_path / "empty"), "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no prediction for" in err and "\n" not in err
    assert not (tmp_path / "s.json").exists()
