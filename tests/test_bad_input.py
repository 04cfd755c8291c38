"""Bad input (issues #4, #5) through the CLI: a corrupt image or label, a label id outside the dataset,
an image/label size mismatch, a missing split, a prediction of the wrong size or dtype. Each ends with
ONE stderr line naming the file, a non-zero exit, and no metrics / manifest that looks finished."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evaluate import write_model

from hmsa.cli import main
from hmsa.data.labels import CITYSCAPES_CLASSES

ROOT = Path(__file__).resolve().parents[1]
VAL_IMG = "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
VAL_LAB = "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"


@pytest.fixture()
def data(embedded_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HMSA_TRACKING", "0")
    shutil.copytree(embedded_data, tmp_path / "data")
    assert (tmp_path / "data" / VAL_IMG).is_file() and (tmp_path / "data" / VAL_LAB).is_file()
    return tmp_path / "data"


def _one_line_naming(capsys: pytest.CaptureFixture, code: int, name: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert name in err, err
    return err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def _bad_id(path: Path) -> None:
    arr = np.asarray(Image.open(path)).copy()
    arr[0, 0] = 200  # not a Cityscapes labelId (0..33)
    Image.fromarray(arr).save(path)


def _smaller(path: Path) -> None:
    Image.open(path).resize((32, 16), Image.Resampling.NEAREST).save(path)


CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "corrupt image": (VAL_IMG, _truncate, "unreadable image"),
    "corrupt label": (VAL_LAB, _truncate, "unreadable label"),
    "label id outside the dataset": (VAL_LAB, _bad_id, "[200]"),
    "image/label size mismatch": (VAL_LAB, _smaller, "differs from its image"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_evaluate_bad_data(case: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rel, damage, what = CASES[case]
    damage(data / rel)
    model = write_model(tmp_path / "m.pt", 19, CITYSCAPES_CLASSES)
    code = main(["evaluate", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model", str(model),
                 "--out-dir", str(tmp_path / "eval"), "--setting", "single:1", f"data.root={data / 'cityscapes'}",
                 "eval.max_images=0", "eval.save_maps=0"])
    err = _one_line_naming(capsys, code, Path(rel).name)
    assert what in err
    assert not (tmp_path / "eval/metrics.json").exists() and not (tmp_path / "eval/per_class.csv").exists()


def test_missing_split(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.rmtree(data / "cityscapes/leftImg8bit/val")
    code = main(["data", "prepare", "--dataset", "cityscapes", "--root", str(data / "cityscapes"),
                 "--out", str(tmp_path / "prepared.json")])
    _one_line_naming(capsys, code, str(data / "cityscapes/leftImg8bit/val"))
    assert not (tmp_path / "prepared.json").exists()


def test_autolabel_corrupt_image_leaves_no_manifest(data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    victim = sorted((data / "cityscapes/leftImg8bit/train_extra").rglob("*.png"))[1]
    _truncate(victim)
    model = write_model(tmp_path / "m.pt", 19, CITYSCAPES_CLASSES)
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")  # an earlier run's: must not survive a failed run
    code = main(["autolabel", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model", str(model),
                 "--out-dir", str(tmp_path / "labels"), "--manifest", str(manifest),
                 f"data.root={data / 'cityscapes'}", "autolabel.scales=[1.0]"])
    _one_line_naming(capsys, code, victim.name)
    assert not manifest.exists()


def _diverged_model(path: Path) -> Path:
    """A model file whose output layer holds a NaN, as a run that diverged would leave."""
    import torch

    write_model(path, 19, CITYSCAPES_CLASSES)
    state = torch.load(path, weights_only=True)
    bias = next(k for k, v in state["model"].items() if k.endswith("bias") and v.shape == (19,))
    state["model"][bias][3] = float("nan")
    torch.save(state, path)
    return path


@pytest.mark.parametrize("command", ["evaluate", "autolabel"])
def test_diverged_model_is_one_line(command: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _diverged_model(tmp_path / "m.pt")
    out = tmp_path / "out"
    argv = [command, "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model", str(model),
            "--out-dir", str(out)]
    if command == "evaluate":
        argv += ["--setting", "hierarchical:0.5,1", "eval.max_images=0", "eval.save_maps=0"]
    else:
        argv += ["--manifest", str(tmp_path / "manifest.json"), "autolabel.scales=[0.5,1.0]"]
    argv.append(f"data.root={data / 'cityscapes'}")
    err = _one_line_naming(capsys, main(argv), str(model))
    assert "non-finite logits" in err
    assert not (out / "metrics.json").exists() and not (tmp_path / "manifest.json").exists()
    assert not list(out.rglob("*_gtCoarse_labelIds.png"))  # no auto-label made of NaN


def _predictions(data: Path, out: Path) -> list[Path]:
    out.mkdir()
    preds = []
    for g in sorted((data / "cityscapes/gtFine/val").rglob("*_labelIds.png")):
        preds.append(out / g.name.replace("_gtFine_labelIds", "_pred"))
        shutil.copyfile(g, preds[-1])
    return preds


@pytest.mark.parametrize("case", ["wrong size", "16-bit", "rgb", "corrupt", "id outside", "bad ground truth"])
def test_score_bad_prediction(case: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    preds = _predictions(data, tmp_path / "preds")
    victim = preds[0]
    arr = np.asarray(Image.open(victim))
    if case == "wrong size":
        _smaller(victim)
    elif case == "16-bit":
        Image.fromarray(arr.astype(np.uint16)).save(victim)
    elif case == "rgb":
        Image.fromarray(np.stack([arr] * 3, -1)).save(victim)
    elif case == "corrupt":
        _truncate(victim)
    elif case == "id outside":
        _bad_id(victim)
    else:
        victim = data / VAL_LAB
        _bad_id(victim)
    out = tmp_path / "score.json"
    code = main(["score", "--dataset", "cityscapes", "--gt", str(data / "cityscapes/gtFine/val"),
                 "--pred", str(tmp_path / "preds"), "--out", str(out)])
    _one_line_naming(capsys, code, victim.name)
    assert not out.exists()


def test_mapillary_prepare_bad_label_leaves_no_manifest(data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    victim = sorted((data / "mapillary/validation/v1.2/labels").glob("*.png"))[0]
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = 66  # v1.2 has ids 0..65
    Image.fromarray(arr).save(victim)
    out = tmp_path / "prepare.json"
    code = main(["data", "prepare", "--dataset", "mapillary", "--root", str(data / "mapillary"),
                 "--prepared", str(tmp_path / "prepared"), "--long-edge", "0", "--out", str(out)])
    _one_line_naming(capsys, code, victim.name)
    assert not out.exists()
