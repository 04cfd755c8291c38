"""Cityscapes in its official layout (section 5.1): ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``
with ``gtFine`` (train/val/test) or ``gtCoarse`` (train_extra) ``*_labelIds.png``; labelIds are mapped
to the 19 trainIds with the official table (255 = ignore). Auto-labels (section 4), written by
``hmsa autolabel``, follow the gtCoarse layout under their own root and already hold trainIds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from hmsa.config import DATASET_SPLITS
from hmsa.data.errors import MissingDataError, open_image, open_label, valid_ids
from hmsa.data.labels import CITYSCAPES_CLASSES, IGNORE, cityscapes_label_to_train_lut
from hmsa.data.transforms import Transform, eval_transform
from hmsa.errors import BadInputError

SPLITS = DATASET_SPLITS["cityscapes"]
LABELS = ("fine", "coarse", "autolabel", "none")
_SUFFIX = "_leftImg8bit.png"
# labelIds of the official table (0..33; -1 cannot be stored in a PNG); auto-labels hold trainIds or 255
LABEL_IDS = valid_ids(range(34))
AUTOLABEL_IDS = valid_ids([*range(19), IGNORE])


def cityscapes_stem(path: Path) -> str:
    """``.../aachen/aachen_000000_000019_leftImg8bit.png`` -> ``aachen/aachen_000000_000019``."""
    path = Path(path)
    return f"{path.parent.name}/{path.name[: -len(_SUFFIX)]}"


def label_file(root: Path, split: str, name: str, labels: str, label_root: Path | None = None) -> Path | None:
    if labels == "fine":
        return Path(root) / "gtFine" / split / f"{name}_gtFine_labelIds.png"
    if labels == "coarse":
        return Path(root) / "gtCoarse" / split / f"{name}_gtCoarse_labelIds.png"
    if labels == "autolabel":
        return Path(label_root or "") / split / f"{name}_gtCoarse_labelIds.png"
    return None


class CityscapesDataset(Dataset):
    num_classes = 19
    ignore_index = IGNORE
    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: Path, split: str, labels: str = "fine", label_root: Path | None = None,
                 transform: Transform | None = None) -> None:
        if split not in SPLITS:
            raise BadInputError(f"cityscapes split must be one of {SPLITS}, got {split!r}")
        if labels not in LABELS:
            raise ValueError(f"cityscapes labels must be one of {LABELS}, got {labels!r}")
        if labels == "autolabel" and label_root is None:
            raise ValueError("cityscapes: labels='autolabel' needs label_root")
        self.root, self.split, self.labels = Path(root), split, labels
        self.transform = transform or eval_transform()
        # auto-labels already hold trainIds: an identity table keeps one code path
        self.lut = np.arange(256, dtype=np.uint8) if labels == "autolabel" else cityscapes_label_to_train_lut()
        self.valid = AUTOLABEL_IDS if labels == "autolabel" else LABEL_IDS
        img_dir = self.root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise MissingDataError(img_dir, f"Cityscapes {split!r} split not found (no image folder)")
        images = sorted(img_dir.glob(f"*/*{_SUFFIX}"))
        if not images:
            raise MissingDataError(img_dir, f"no *{_SUFFIX} images in the {split!r} split")
        self.items: list[tuple[Path, Path | None, str]] = []
        missing = []
        for img in images:
            name = cityscapes_stem(img)
            lab = label_file(self.root, split, name, labels, label_root)
            if lab is not None and not lab.is_file():
                missing.append(lab)
            self.items.append((img, lab, name))
        if missing:
            raise MissingDataError(missing[0], f"label missing ({len(missing)} of {len(images)} "
                                               f"{split} images have no {labels} label)")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """The image and its trainId label (all 255 without labels), before any transform; a corrupt
        file, a size mismatch or an id outside the table raises a DataError naming the file."""
        img_path, lab_path, _ = self.items[i]
        image = open_image(img_path)
        if lab_path is None:
            return image, np.full((image.height, image.width), IGNORE, np.uint8)
        return image, self.lut[open_label(lab_path, self.valid, image.size)]

    def __getitem__(self, i: int) -> dict:
        img, lab = self.transform(*self.load(i))
        return {"image": img, "label": lab, "name": self.items[i][2]}
