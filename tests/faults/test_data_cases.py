"""Data of issue #15: corrupt files must not pass ``hmsa data verify`` / ``data prepare`` (which decode
every image and label) nor reach training as a traceback (class-uniform sampling reads labels with the
loaders' checks); a damaged centroid cache is rebuilt."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.faults.cases import TINY, Case, check, run

VAL_IMG = "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
VAL_LAB = "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"


def _first(pattern: str) -> Callable[[Path], Path]:
    return lambda data: sorted(data.glob(pattern))[0]


TRAIN_LAB = _first("cityscapes/gtFine/train/*/*_gtFine_labelIds.png")
COARSE_LAB = _first("cityscapes/gtCoarse/train_extra/*/*_gtCoarse_labelIds.png")
MAP_LAB = _first("mapillary/validation/v1.2/labels/*.png")


def damage(where: str | Callable[[Path], Path], how: Callable[[Path], None]) -> Callable[[Path], None]:
    """A setup damaging one file of the case's private data copy (``{tmp}/data``)."""

    def setup(tmp: Path) -> None:
        data = tmp / "data"
        how(data / where if isinstance(where, str) else where(data))

    return setup


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def bad_id(value: int) -> Callable[[Path], None]:
    def how(path: Path) -> None:
        arr = np.asarray(Image.open(path)).copy()
        arr[0, 0] = value
        Image.fromarray(arr).save(path)

    return how


def smaller(path: Path) -> None:
    Image.open(path).resize((32, 16), Image.Resampling.NEAREST).save(path)


def sixteen_bit(path: Path) -> None:
    arr = np.asarray(Image.open(path)).astype(np.uint16)
    arr[0, :4] = 300  # above 255: no uint8 table can map it
    Image.fromarray(arr).save(path)


def rgb(path: Path) -> None:
    arr = np.asarray(Image.open(path))
    Image.fromarray(np.stack([arr] * 3, -1)).save(path)


def _verify(dataset: str = "cityscapes") -> list[str]:
    return ["data", "verify", "--dataset", dataset, "--root", f"{{data}}/{dataset}"]


def _prepare(dataset: str = "cityscapes") -> list[str]:
    extra = ["--prepared", "{tmp}/prepared", "--long-edge", "0"] if dataset == "mapillary" else []
    return ["data", "prepare", "--dataset", dataset, "--root", f"{{data}}/{dataset}", "--out", "{tmp}/prepared.json",
            *extra]


PREPARED = ("{tmp}/prepared.json",)
OVERRIDES = ["data.root={data}/cityscapes", "data.max_images=0"]
TRAIN = ["train", "--config", str(TINY), "--run-dir", "{tmp}/run", "--out-model", "{tmp}/run.pt", *OVERRIDES]
TRAINED = ("{tmp}/run.pt",)

CASES = [
    Case("verify: a truncated label", _verify(), names=Path(VAL_LAB).name, setup=damage(VAL_LAB, truncate)),
    Case("verify: a truncated image", _verify(), names=Path(VAL_IMG).name, setup=damage(VAL_IMG, truncate)),
    Case("verify: label id 200", _verify(), names=Path(VAL_LAB).name, setup=damage(VAL_LAB, bad_id(200))),
    Case("verify: label smaller than its image", _verify(), names=Path(VAL_LAB).name, setup=damage(VAL_LAB, smaller)),
    Case("verify: a 16-bit label above 255", _verify(), names="_gtFine_labelIds.png",
         setup=damage(TRAIN_LAB, sixteen_bit)),
    Case("verify: an RGB label", _verify(), names="_gtFine_labelIds.png", setup=damage(TRAIN_LAB, rgb)),
    Case("verify: a truncated coarse label", _verify(), names="_gtCoarse_labelIds.png",
         setup=damage(COARSE_LAB, truncate)),
    Case("verify: Mapillary label id 66", _verify("mapillary"), names="mapillary/validation/v1.2/labels/",
         setup=damage(MAP_LAB, bad_id(66))),
    Case("prepare: a truncated label", _prepare(), names=Path(VAL_LAB).name, setup=damage(VAL_LAB, truncate),
         unfinished=PREPARED),
    Case("prepare: label id 200", _prepare(), names=Path(VAL_LAB).name, setup=damage(VAL_LAB, bad_id(200)),
         unfinished=PREPARED),
    Case("prepare: label smaller than its image", _prepare(), names=Path(VAL_LAB).name,
         setup=damage(VAL_LAB, smaller), unfinished=PREPARED),
    Case("prepare: Mapillary truncated label", _prepare("mapillary"), names="mapillary/validation/v1.2/labels/",
         setup=damage(MAP_LAB, truncate), unfinished=PREPARED),
    Case("train: a 16-bit label above 255 (class-uniform sampling)", TRAIN, names="_gtFine_labelIds.png",
         setup=damage(TRAIN_LAB, sixteen_bit), unfinished=TRAINED),
    Case("train: an RGB label (class-uniform sampling)", TRAIN, names="_gtFine_labelIds.png",
         setup=damage(TRAIN_LAB, rgb), unfinished=TRAINED),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)


def test_a_damaged_centroid_cache_is_rebuilt(data: Path, tmp_path: Path) -> None:
    """A cache truncated by a full disk (``Expecting value``), or written for other images, is rebuilt
    with a warning: it is only a cache. Training over a truncated one runs."""
    from hmsa import config
    from hmsa.training.loop import build_pools, pool_centroids

    overrides = [*OVERRIDES, "data.centroid_cache={tmp}/cache", "train.iterations=1"]
    train = [*TRAIN, *overrides[len(OVERRIDES):]]
    cfg = config.load(TINY, [a.replace("{data}", str(data)).replace("{tmp}", str(tmp_path)) for a in overrides])
    pools, _, _ = build_pools(cfg)
    good_table = pool_centroids(cfg, pools, tmp_path / "run")
    (cache,) = (tmp_path / "cache").glob("centroids-*.json")
    good = json.loads(cache.read_text())
    cache.write_text(json.dumps({**good, "images": 999}))  # another image set under this name
    assert pool_centroids(cfg, pools, tmp_path / "run") == good_table
    assert json.loads(cache.read_text()) == good
    cache.write_text(cache.read_text()[:40])
    out = run(Case("train over a truncated cache", train, names=""), tmp_path, data)
    assert out.code == 0, out.stderr
    assert json.loads(cache.read_text()) == good


def test_verify_decodes_in_parallel_and_names_every_bad_file(data: Path) -> None:
    """Two bad files: the first is named, the count of the others too; one worker or several alike."""
    from hmsa.data.cityscapes import CityscapesDataset
    from hmsa.data.errors import DataError
    from hmsa.data.verify import decode_all, verify

    truncate(data / VAL_LAB)
    bad_id(200)(TRAIN_LAB(data))
    splits = [CityscapesDataset(data / "cityscapes", split) for split in ("train", "val")]
    for workers in (1, 2):
        with pytest.raises(DataError) as err:
            decode_all(splits, workers=workers)
        assert TRAIN_LAB(data).name in str(err.value) and "1 more bad file" in str(err.value)
    assert verify("cityscapes", data / "cityscapes", decode=False)["val"] == 2  # the layout alone passes
