"""Command-line values that make no sense (issue #15): `data synth` sizes and counts, `--tag`, the
`track` invocation id, and `hmsa score` given predictions that do not match the ground truth. Each is
one line naming the option or file, and nothing that looks finished is left."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.faults.cases import ROOT, Case, check

SYNTH = ["data", "synth", "--out", "{tmp}/synth", "--mapillary", "training=1,validation=1"]
DONE = ("{tmp}/synth/SYNTH_COMPLETE.json",)
GT = "{data}/cityscapes/gtFine/val"


def _synth(name: str, extra: list[str], names: str) -> Case:
    return Case(name, [*SYNTH, *extra], names=names, unfinished=DONE)


def _predictions(tmp: Path, as_train_ids: bool = False, extra: bool = False) -> None:
    """Perfect labelId predictions of the val split (or their trainIds), optionally with one more image."""
    from hmsa.data.labels import IGNORE, cityscapes_label_to_train_lut

    gt = tmp / "data/cityscapes/gtFine/val"
    out = tmp / "pred"
    for g in sorted(gt.rglob("*_gtFine_labelIds.png")):
        arr = np.asarray(Image.open(g))
        if as_train_ids:  # what a model outputs before the labelIds mapping; no 255 in an argmax
            arr = cityscapes_label_to_train_lut()[arr]
            arr[arr == IGNORE] = 0
        out.mkdir(exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(out / g.name.replace("_gtFine_labelIds", "_pred_labelIds"))
    if extra:
        train = sorted((tmp / "data/cityscapes/gtFine/train").rglob("*_gtFine_labelIds.png"))[0]
        shutil.copy(train, out / train.name.replace("_gtFine_labelIds", "_pred_labelIds"))


CASES = [
    _synth("an image size of 0x0", ["--size", "0x0"], "--size"),
    _synth("an image size that is not HxW", ["--size", "128"], "--size"),
    _synth("a negative image count", ["--cityscapes", "train=-1,val=1", "--size", "32x64"], "--cityscapes"),
    _synth("a misspelt split", ["--cityscapes", "trian=1,val=1", "--size", "32x64"], "trian"),
    _synth("a negative seed", ["--seed", "-1", "--cityscapes", "train=1", "--size", "32x64"], "--seed"),
    Case("a submit tag without a value",
         ["submit", "--stage", "s", "--run-dir", "{tmp}/run", "--cluster", str(ROOT / "configs/cluster/local.yaml"),
          "--tag", "novalue", "--", "data", "synth", "--out", "{tmp}/synth", "--cityscapes", "train=1",
          "--mapillary", "training=1", "--size", "16x32"],
         names="--tag", unfinished=("{tmp}/run/job.json", *DONE)),
    Case("an invocation id that climbs out of .hmsa/invocations",
         ["track", "--invocation", "../../..", "--experiment", "e"], names="--invocation",
         env={"HMSA_TRACKING": "1", "MLFLOW_TRACKING_URI": "sqlite:///{tmp}/mlflow.db"},
         unfinished=("{tmp}/mlflow.db",)),
    Case("an invocation id with a quote (an MLflow filter injection)",
         ["track", "--invocation", "x' OR tags.a = 'b", "--experiment", "e"], names="--invocation",
         env={"HMSA_TRACKING": "1", "MLFLOW_TRACKING_URI": "sqlite:///{tmp}/mlflow.db"},
         unfinished=("{tmp}/mlflow.db",)),
    Case("score: a prediction with no ground truth (another split's image)",
         ["score", "--dataset", "cityscapes", "--gt", GT, "--pred", "{tmp}/pred", "--out", "{tmp}/score.json"],
         names="aachen_", setup=lambda t: _predictions(t, extra=True), unfinished=("{tmp}/score.json",)),
    Case("score: --out is a directory",
         ["score", "--dataset", "cityscapes", "--gt", GT, "--pred", "{tmp}/pred", "--out", "{tmp}/scores"],
         names="{tmp}/scores: --out is a directory", setup=lambda t: (_predictions(t), (t / "scores").mkdir())),
    Case("score: trainId predictions where labelIds are expected",
         ["score", "--dataset", "cityscapes", "--gt", GT, "--pred", "{tmp}/pred", "--out", "{tmp}/score.json"],
         names="trainIds", setup=lambda t: _predictions(t, as_train_ids=True), unfinished=("{tmp}/score.json",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)


def test_labelid_predictions_still_score(data: Path, tmp_path: Path) -> None:
    """The trainId guard must not refuse real labelIds predictions (perfect ones score 100 %)."""
    from hmsa.evaluation.score import score

    _predictions(tmp_path)
    assert score("cityscapes", data / "cityscapes/gtFine/val", tmp_path / "pred")["miou"] == 1.0
