"""Joint image + label transforms (section 5.1's augmentation): random scale 0.5-2.0, crop, flip,
colour jitter, gaussian blur. Labels are resized with nearest neighbour and padded with 255. All
randomness comes from torch's global RNG, which the training loop seeds per sample."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import tv_tensors

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IGNORE = 255

# (image, label[, center (y, x) that the crop must contain]) -> (image tensor, label tensor)
Transform = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _to_tensors(image: Image.Image, label: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    img = tv_tensors.Image(TF.pil_to_tensor(image.convert("RGB")))
    mask = tv_tensors.Mask(torch.from_numpy(np.asarray(label, dtype=np.int64).copy())[None])
    return img, mask


def _normalize(img: torch.Tensor) -> torch.Tensor:
    return TF.normalize(TF.to_dtype(img, torch.float32, scale=True), MEAN, STD).as_subclass(torch.Tensor)


def _rand(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _crop_origin(shape: tuple[int, int], crop: tuple[int, int],
                 center: tuple[float, float] | None) -> tuple[int, int]:
    """Random crop origin; with a class-uniform centroid, one whose crop contains that point."""
    out = []
    for extent, c, point in zip(shape, crop, center or (None, None), strict=True):
        hi = extent - c
        if point is None:
            out.append(int(torch.randint(0, hi + 1, ())))
        else:  # the point lands uniformly inside the crop, clamped to the image
            out.append(min(max(int(point) - int(torch.randint(0, c, ())), 0), hi))
    return out[0], out[1]


def train_transform(crop: tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True,
                    color_jitter: float = 0.25, blur_prob: float = 0.5) -> Transform:
    """Random scale, pad + random crop to ``crop`` (H, W), flip, colour jitter, blur, normalise."""
    ch, cw = crop
    jitter = T.ColorJitter(color_jitter, color_jitter, color_jitter) if color_jitter > 0 else None
    blur = T.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))

    def apply(image: Image.Image, label: np.ndarray,
              center: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = _to_tensors(image, label)
        s = _rand(*scale_range)
        h, w = img.shape[-2:]
        size = [max(1, round(h * s)), max(1, round(w * s))]
        img = TF.resize(img, size, antialias=True)
        mask = TF.resize(mask, size, interpolation=T.InterpolationMode.NEAREST)
        ph, pw = max(0, ch - size[0]), max(0, cw - size[1])
        if ph or pw:
            img = TF.pad(img, [0, 0, pw, ph], fill=0)
            mask = TF.pad(mask, [0, 0, pw, ph], fill=IGNORE)
        top, left = _crop_origin(img.shape[-2:], (ch, cw), None if center is None else
                                 (center[0] * size[0] / h, center[1] * size[1] / w))
        img, mask = TF.crop(img, top, left, ch, cw), TF.crop(mask, top, left, ch, cw)
        if flip and float(torch.rand(())) < 0.5:
            img, mask = TF.horizontal_flip(img), TF.horizontal_flip(mask)
        if jitter is not None:
            img = jitter(img)
        if blur_prob > 0 and float(torch.rand(())) < blur_prob:
            img = blur(img)
        return _normalize(img), mask[0].as_subclass(torch.Tensor).long()

    return apply


def eval_transform() -> Transform:
    """No geometry change: evaluation runs at the image's own size."""

    def apply(image: Image.Image, label: np.ndarray, center: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = _to_tensors(image, label)
        return _normalize(img), mask[0].as_subclass(torch.Tensor).long()

    return apply
