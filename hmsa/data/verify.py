"""``hmsa data verify``: layout, image counts and labels of a dataset root, with one clear line
saying what is missing."""

from __future__ import annotations

from pathlib import Path

from hmsa.errors import BadInputError

REAL_COUNTS = {
    "cityscapes": {"train": 2975, "val": 500, "test": 1525, "train_extra": 19998},
    "mapillary": {"training": 18000, "validation": 2000},
}
_CS_SPLITS = {"train": "fine", "val": "fine", "test": "fine", "train_extra": "coarse"}
HOW_TO_GET = {
    "cityscapes": "download leftImg8bit_trainvaltest, gtFine_trainvaltest, leftImg8bit_trainextra and gtCoarse "
                  "from the official Cityscapes site (registration required) and unpack them into one folder",
    "mapillary": "download Mapillary Vistas v1.2 from the official Mapillary site (registration required) and "
                 "unpack it so the folder holds config.json, training/ and validation/",
}


def _verify_cityscapes(root: Path) -> dict[str, int]:
    from hmsa.data.cityscapes import CityscapesDataset

    counts = {}
    for split, labels in _CS_SPLITS.items():
        if not (root / "leftImg8bit" / split).is_dir():
            continue
        # test labels are placeholders in the real release; only their presence is required
        counts[split] = len(CityscapesDataset(root, split, labels=labels))
    for split in ("train", "val"):
        if split not in counts:
            raise FileNotFoundError(f"{root / 'leftImg8bit' / split}: missing (Cityscapes needs train and val)")
    return counts


def _verify_mapillary(root: Path) -> dict[str, int]:
    from hmsa.data.mapillary import MapillaryDataset

    return {split: len(MapillaryDataset(root, split)) for split in ("training", "validation")}


def verify(dataset: str, root: Path, expected: dict[str, int] | None = None) -> dict[str, int]:
    """Count the images per split (every image must have its label); compare with ``expected``."""
    root = Path(root)
    if not root.is_dir():
        hint = HOW_TO_GET.get(dataset, "")
        raise FileNotFoundError(f"{root}: dataset root not found; {hint}, then run "
                                f"`hmsa data verify --dataset {dataset} --root <folder> --real-counts`")
    if dataset == "cityscapes":
        counts = _verify_cityscapes(root)
    elif dataset == "mapillary":
        counts = _verify_mapillary(root)
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    for split, n in (expected or {}).items():
        if counts.get(split, 0) != n:
            raise BadInputError(f"{root}: {dataset} {split} has {counts.get(split, 0)} images, expected {n}")
    return counts
