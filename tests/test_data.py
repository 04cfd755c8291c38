"""The embedded dataset is written in the real formats, deterministically, with thin structures and
coarse labels like the real ones; the loaders map ids the official way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hmsa.data import build_dataset
from hmsa.data.cityscapes import CityscapesDataset
from hmsa.data.labels import cityscapes_classes, cityscapes_label_to_train_lut, cityscapes_train_to_label_lut
from hmsa.data.synth import generate
from hmsa.data.transforms import train_transform
from hmsa.data.verify import verify

SMALL = {"cityscapes_counts": {"train": 2, "val": 1, "train_extra": 2},
         "mapillary_counts": {"training": 2, "validation": 1}, "size": (64, 128)}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=3, **SMALL)
    b = generate(tmp_path / "b", seed=3, **SMALL)
    c = generate(tmp_path / "c", seed=4, **SMALL)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert a["content_hash"] == b["content_hash"] != c["content_hash"]


def test_real_cityscapes_layout_and_ids(embedded_data: Path) -> None:
    root = embedded_data / "cityscapes"
    img = root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    fine = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    assert Image.open(img).mode == "RGB"
    lab = np.asarray(Image.open(fine))
    assert lab.dtype == np.uint8
    from cityscapesscripts.helpers.labels import id2label

    assert set(np.unique(lab)) <= set(id2label)
    assert {7, 8} & set(np.unique(lab)) and 17 in np.unique(lab)  # road or sidewalk, and poles
    assert cityscapes_classes()[:3] == ["road", "sidewalk", "building"]
    from hmsa.data.labels import CITYSCAPES_CLASSES

    assert CITYSCAPES_CLASSES == cityscapes_classes()  # the import-time copy equals the official table


def test_thin_structures_are_a_few_pixels_wide(embedded_data: Path) -> None:
    ds = CityscapesDataset(embedded_data / "cityscapes", "train")
    label = ds[0]["label"].numpy()
    pole = (label == 5).astype(np.int8)  # trainId of pole
    # horizontal runs of pole pixels: starts and ends of each run, row by row
    edges = np.diff(np.pad(pole, ((0, 0), (1, 1))), axis=1)
    widths = np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]
    assert pole.any() and np.median(widths) <= 3


def test_coarse_labels_are_coarse(embedded_data: Path) -> None:
    files = sorted((embedded_data / "cityscapes/gtCoarse/train_extra").rglob("*_gtCoarse_labelIds.png"))
    assert files
    labels = [np.asarray(Image.open(f)) for f in files]
    assert np.mean([(lab == 0).mean() for lab in labels]) > 0.3  # large unlabelled areas
    assert not any((lab == 17).any() for lab in labels)  # no poles: too thin for polygons


def test_label_mapping_on_a_handmade_png(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    (root / "leftImg8bit/val/x").mkdir(parents=True)
    (root / "gtFine/val/x").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "leftImg8bit/val/x/x_000000_000001_leftImg8bit.png")
    ids = np.array([[7, 8, 26], [0, 1, 33]], np.uint8)
    Image.fromarray(ids).save(root / "gtFine/val/x/x_000000_000001_gtFine_labelIds.png")
    label = CityscapesDataset(root, "val")[0]["label"]
    assert label.tolist() == [[0, 1, 13], [255, 255, 18]]
    lut = cityscapes_train_to_label_lut()
    assert lut[cityscapes_label_to_train_lut()[26]] == 26


def test_mapillary_unlabeled_becomes_ignore(embedded_data: Path) -> None:
    ds = build_dataset("mapillary", embedded_data / "mapillary", "training")
    raw = np.asarray(Image.open(ds.items[0][1]))
    label = ds[0]["label"].numpy()
    assert ds.num_classes == 65 and len(ds.class_names) == 65
    assert ((raw == 65) == (label == 255)).all()


def test_train_transform_keeps_image_and_label_aligned() -> None:
    img = np.zeros((32, 64, 3), np.uint8)
    img[:, :16] = 255  # white stripe on the left, labelled 1
    label = np.zeros((32, 64), np.uint8)
    label[:, :16] = 1
    tf = train_transform((32, 64), scale_range=(1.0, 1.0), flip=True, color_jitter=0.0, blur_prob=0.0)
    for seed in range(6):
        torch.manual_seed(seed)
        x, y = tf(Image.fromarray(img), label)
        bright = x.mean(0) > 0
        assert torch.equal(bright, y == 1)


def test_verify_reports_missing_labels(tmp_path: Path) -> None:
    generate(tmp_path / "d", seed=0, **SMALL)
    root = tmp_path / "d/cityscapes"
    assert verify("cityscapes", root) == {"train": 2, "val": 1, "train_extra": 2}
    victim = next((root / "gtFine/val").rglob("*.png"))
    victim.unlink()
    with pytest.raises(FileNotFoundError) as err:
        verify("cityscapes", root)
    assert victim.name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="expected 2975"):
        verify("mapillary", tmp_path / "d/mapillary", {"training": 2975})


def test_bad_root_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        verify("cityscapes", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_dataset("mapillary", tmp_path, "training")


def test_mapillary_prepare_resizes_once_and_resumes(embedded_data: Path, tmp_path: Path) -> None:
    import shutil

    from hmsa.cli import main
    from hmsa.data.mapillary import MapillaryDataset

    raw, out = tmp_path / "raw", tmp_path / "prepared"
    shutil.copytree(embedded_data / "mapillary", raw)  # changed below: not the shared copy
    argv = ["data", "prepare", "--dataset", "mapillary", "--root", str(raw), "--prepared", str(out),
            "--long-edge", "96", "--out", str(tmp_path / "m.json")]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["counts"] == {"training": 4, "validation": 2} and manifest["resized_or_copied"] == 6
    ds, src = MapillaryDataset(out, "validation"), MapillaryDataset(raw, "validation")
    image, label = ds.load(0)
    raw_label = src.load(0)[1]
    assert image.size == (96, 48) and label.shape == (48, 96)  # 64x128 -> long edge 96
    assert set(np.unique(label)) <= set(np.unique(raw_label))  # nearest: no new (blended) ids
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(argv) == 0  # cached: nothing redone
    assert json.loads((tmp_path / "m.json").read_text())["skipped"] == 6
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    # a changed source label is redone, alone
    Image.fromarray(np.full((64, 128), 13, np.uint8)).save(src.items[0][1])
    assert main(argv) == 0
    assert json.loads((tmp_path / "m.json").read_text())["resized_or_copied"] == 1
    assert (np.asarray(Image.open(ds.items[0][1])) == 13).all()


def test_mapillary_prepare_without_resize_copies(embedded_data: Path, tmp_path: Path) -> None:
    from hmsa.data.prepare import prepare_mapillary, target_size

    assert target_size((4000, 3000), 2177) == (2177, 1633) and target_size((1920, 1080), 0) == (1920, 1080)
    result = prepare_mapillary(embedded_data / "mapillary", tmp_path / "p", long_edge=0)
    assert result["counts"] == {"training": 4, "validation": 2}
    for f in (f for f in (embedded_data / "mapillary").rglob("*") if f.is_file()):
        assert (tmp_path / "p" / f.relative_to(embedded_data / "mapillary")).read_bytes() == f.read_bytes()
