"""Datasets in their real on-disk formats (Cityscapes, Mapillary Vistas v1.2) and the generated
embedded dataset that uses the same formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from hmsa.data.cityscapes import CityscapesDataset
from hmsa.data.mapillary import MapillaryDataset

DATASETS: dict[str, type[Dataset]] = {"cityscapes": CityscapesDataset, "mapillary": MapillaryDataset}


def build_dataset(name: str, root: Path, split: str, **kw: Any) -> Dataset:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    return DATASETS[name](Path(root), split, **kw)
