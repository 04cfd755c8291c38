"""The embedded dataset is written in the real formats, deterministically, with every Cityscapes class,
thin structures, coarse labels like the real ones and their truth outside the root; the loaders map ids
the official way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hmsa.data import build_dataset, scenes, synth
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
    assert a["counts"]["cityscapes"] == SMALL["cityscapes_counts"]
    assert a["truth"] == {"cityscapes": {"train_extra": "truth/cityscapes/train_extra"}}
    # one image depends on (seed, dataset, split, index) only, not on the counts around it
    one = synth.scene(3, "cityscapes", "train_extra", 1, (64, 128))
    again = synth.scene(3, "cityscapes", "train_extra", 1, (64, 128))
    assert all(np.array_equal(x, y) for x, y in zip(one, again, strict=True))
    other = synth.scene(3, "cityscapes", "train", 1, (64, 128))
    assert not np.array_equal(one[1], other[1])


def _train_ids(label_ids: np.ndarray) -> np.ndarray:
    return cityscapes_label_to_train_lut()[label_ids]


def test_every_class_many_times_in_the_default_val_split() -> None:
    """All 19 evaluated classes are in the default val split, each in many images (the power to see
    effects of half a point: no class scores 0 for lack of examples)."""
    n = synth.DEFAULT_CITYSCAPES["val"]
    assert n >= 32 and synth.DEFAULT_CITYSCAPES.get("test", 0) > 0
    lut = synth._lut(scenes.CITYSCAPES_IDS, 0)
    images = np.zeros(19, int)
    pixels = np.zeros(19, int)
    for i in range(n):
        counts = np.bincount(_train_ids(lut[synth.scene(0, "cityscapes", "val", i)[0]]).ravel(), minlength=256)
        images += counts[:19] > 0
        pixels += counts[:19]
    missing = [name for name, k in zip(cityscapes_classes(), images, strict=True) if k < n // 4]
    assert not missing, f"in fewer than {n // 4} of {n} val images: {missing}"
    assert pixels.min() >= 1000


def test_road_and_sidewalk_share_every_scene_and_only_shadows_hide_which_is_which() -> None:
    """Both ground classes in every scene (RMI gets no gradient for a class absent from an image); outside
    shadows their colours do not overlap (a local cue), inside shadows they cannot be told apart (the
    context case for a low scale)."""
    lit_road, lit_walk, dark_road, dark_walk = [], [], [], []
    shaded = 0
    for i in range(24):
        cv = synth.canvas(0, "cityscapes", "val", i)
        road, walk = cv.cls == scenes.ROAD, cv.cls == scenes.SIDEWALK
        assert road.mean() > 0.05 and walk.mean() > 0.05, f"scene {i}: road {road.mean()}, sidewalk {walk.mean()}"
        grey = cv.img.mean(-1)
        lit_road.append(np.median(grey[road & ~cv.shade]))
        lit_walk.append(np.median(grey[walk & ~cv.shade]))
        if (road & cv.shade).sum() > 50 and (walk & cv.shade).sum() > 50:
            shaded += 1
            dark_road.append(np.median(grey[road & cv.shade]))
            dark_walk.append(np.median(grey[walk & cv.shade]))
    assert (np.divide(lit_walk, lit_road) > 1.2).all()  # asphalt darker than paving in every scene
    assert shaded >= 12  # most scenes have a shadow across both
    assert np.abs(np.subtract(dark_road, dark_walk)).max() < 4  # the same shade: no local cue left


def test_every_scene_class_has_an_official_id() -> None:
    """Abstract classes -> Cityscapes labelIds covering the 19 trainIds, and -> Mapillary v1.2 indices."""
    from hmsa.data.labels import MAPILLARY_V12_NAMES

    train_ids = set(_train_ids(np.array(list(scenes.CITYSCAPES_IDS.values()), np.uint8)).tolist())
    assert train_ids - {255} == set(range(19))
    assert set(scenes.CITYSCAPES_IDS) == set(scenes.MAPILLARY_IDS)
    assert all(0 <= i < 65 for i in scenes.MAPILLARY_IDS.values())
    riders = {MAPILLARY_V12_NAMES[scenes.MAPILLARY_IDS[c]] for c in (scenes.BICYCLIST, scenes.MOTORCYCLIST)}
    assert riders == {"human--rider--bicyclist", "human--rider--motorcyclist"}


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


THIN_IDS = (17, 19, 20, 33)  # pole, traffic light, traffic sign, bicycle


def _coarse_and_truth(n: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    lut = synth._lut(scenes.CITYSCAPES_IDS, 0)
    return [(coarse, lut[cls]) for cls, _, coarse in
            (synth.scene(0, "cityscapes", "train_extra", i) for i in range(n))]


def test_coarse_labels_are_coarse(embedded_data: Path) -> None:
    files = sorted((embedded_data / "cityscapes/gtCoarse/train_extra").rglob("*_gtCoarse_labelIds.png"))
    assert files
    labels = [np.asarray(Image.open(f)) for f in files]
    assert np.mean([(lab == 0).mean() for lab in labels]) > 0.3  # large unlabelled areas
    pairs = _coarse_and_truth()
    for coarse, truth in pairs:
        assert 0.15 < (coarse > 0).mean() < 0.7
        assert not np.isin(coarse, THIN_IDS).any()  # thin things: no polygons
        assert np.isin(truth, THIN_IDS).any()
        # wide unlabelled borders: two differently labelled pixels are never within 2 px of each other
        for dy, dx in ((0, 1), (0, 2), (1, 0), (2, 0), (1, 1), (1, -1), (2, 2), (2, -2)):
            a = coarse[max(0, -dy): coarse.shape[0] - max(0, dy), max(0, -dx): coarse.shape[1] - max(0, dx)]
            b = coarse[max(0, dy):, max(0, dx):][: a.shape[0], : a.shape[1]]
            assert not ((a > 0) & (b > 0) & (a != b)).any()
        # a polygon holds one class only (gtCoarse's rule): where it labels, it is right, and the
        # polygon behind a thin thing is cut around it rather than swallowing it
        labelled = coarse > 0
        assert np.array_equal(coarse[labelled], truth[labelled])
    # objects left out entirely: some true classes with many pixels have no coarse pixel at all
    left_out = sum(((truth == c).sum() > 150) and not (coarse == c).any()
                   for coarse, truth in pairs for c in np.unique(truth) if c not in (*THIN_IDS, 1))
    assert left_out >= 2


def test_coarse_polygons_are_not_eroded_masks() -> None:
    """A kept object's coarse label is a polygon inside it: well inside the object's eroded mask."""
    from scipy.ndimage import binary_erosion

    ratios = []
    for coarse, truth in _coarse_and_truth():
        for c in (11, 23):  # building, sky: large regions an annotator always outlines
            if (coarse == c).any():
                eroded = binary_erosion(truth == c, iterations=4)
                ratios.append((coarse == c).sum() / max(1, eroded.sum()))
    assert ratios and 0.3 < np.median(ratios) < 0.95


@pytest.mark.parametrize(("dataset", "split"), [("cityscapes", "val"), ("cityscapes", "train_extra"),
                                               ("mapillary", "validation")])
def test_canvas_is_the_scene_as_written(dataset: str, split: str) -> None:
    """Benchmarks redraw a run's images with ``canvas`` to learn what only the generator knows (the
    shadows): it must be the very scene ``generate`` writes, also where the coarse annotation and the
    Mapillary width draw on from the same generator."""
    for i in range(3):
        cls, img, _ = synth.scene(1, dataset, split, i, (64, 128))
        cv = synth.canvas(1, dataset, split, i, (64, 128))
        assert np.array_equal(cv.cls, cls) and np.array_equal(cv.img.astype(np.uint8), img)
        assert cv.shade.shape == cls.shape


def test_truth_of_the_coarse_images_is_outside_the_root(embedded_data: Path) -> None:
    root = embedded_data / "cityscapes"
    assert {p.name for p in root.iterdir()} == {"leftImg8bit", "gtFine", "gtCoarse"}  # the official layout
    images = sorted((root / "leftImg8bit/train_extra").rglob("*_leftImg8bit.png"))
    assert len(images) == 3
    lut = synth._lut(scenes.CITYSCAPES_IDS, 0)
    for img in images:
        city, stem = img.parent.name, img.name[: -len("_leftImg8bit.png")]
        truth = embedded_data / "truth/cityscapes/train_extra" / city / f"{stem}_gtFine_labelIds.png"
        index = int(stem.split("_")[1])
        cls, drawn, coarse = synth.scene(0, "cityscapes", "train_extra", index, (64, 128))
        assert np.array_equal(np.asarray(Image.open(truth)), lut[cls])  # exactly what the generator drew
        assert np.array_equal(np.asarray(Image.open(img)), drawn)
        gt_coarse = root / "gtCoarse/train_extra" / city / f"{stem}_gtCoarse_labelIds.png"
        assert np.array_equal(np.asarray(Image.open(gt_coarse)), coarse)


def test_test_split_has_fine_labels(tmp_path: Path) -> None:
    counts = {"train": 1, "val": 1, "test": 2, "train_extra": 1}
    summary = generate(tmp_path / "d", seed=0, cityscapes_counts=counts, mapillary_counts={"training": 1,
                       "validation": 1}, size=(64, 128))
    assert summary["counts"]["cityscapes"] == counts
    assert verify("cityscapes", tmp_path / "d/cityscapes") == counts
    ds = CityscapesDataset(tmp_path / "d/cityscapes", "test")
    assert len(ds) == 2 and all(ds.items[i][2].split("/")[0] in synth.CITIES["test"] for i in range(2))
    label = ds.load(0)[1]
    assert (label != 255).mean() > 0.8 and len(np.unique(label)) > 5  # real labels, not placeholders


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
