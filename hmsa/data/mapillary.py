"""Mapillary Vistas v1.2 (section 5.1): ``config.json`` (66 labels), ``<split>/images/*.jpg`` and
``<split>/v1.2/labels/*.png`` (uint8 class index). The 65 evaluated classes keep their index; label 65
(``void--unlabeled``) becomes 255 so one ignore index serves both datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from hmsa.config import DATASET_SPLITS
from hmsa.data.errors import DataError, MissingDataError, open_image, open_label, valid_ids
from hmsa.data.labels import IGNORE, MAPILLARY_IGNORE, read_mapillary_config
from hmsa.data.transforms import Transform, eval_transform
from hmsa.errors import BadInputError

SPLITS = DATASET_SPLITS["mapillary"]
LABEL_IDS = valid_ids(range(66))  # the 66 v1.2 labels


class MapillaryDataset(Dataset):
    num_classes = 65
    ignore_index = IGNORE

    def __init__(self, root: Path, split: str, transform: Transform | None = None) -> None:
        if split not in SPLITS:
            raise BadInputError(f"mapillary split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        labels = read_mapillary_config(self.root)
        if len(labels) != 66:
            raise DataError(self.root / "config.json", f"expected the 66 labels of v1.2, found {len(labels)}")
        self.class_names = [lab.get("readable", lab["name"]) for lab in labels[:MAPILLARY_IGNORE]]
        self.transform = transform or eval_transform()
        img_dir, lab_dir = self.root / split / "images", self.root / split / "v1.2" / "labels"
        if not img_dir.is_dir():
            raise MissingDataError(img_dir, f"Mapillary {split!r} split not found (no image folder)")
        images = sorted(img_dir.glob("*.jpg"))
        if not images:
            raise MissingDataError(img_dir, f"no Mapillary *.jpg images in the {split!r} split")
        self.items = [(p, lab_dir / f"{p.stem}.png", p.stem) for p in images]
        missing = [lab for _, lab, _ in self.items if not lab.is_file()]
        if missing:
            raise MissingDataError(missing[0], f"label missing ({len(missing)} of {len(images)} {split} images)")
        self.lut = np.arange(256, dtype=np.uint8)
        self.lut[MAPILLARY_IGNORE] = IGNORE
        self.valid = LABEL_IDS

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        img_path, lab_path, _ = self.items[i]
        image = open_image(img_path)
        return image, self.lut[open_label(lab_path, self.valid, image.size)]

    def __getitem__(self, i: int) -> dict:
        img, lab = self.transform(*self.load(i))
        return {"image": img, "label": lab, "name": self.items[i][2]}
