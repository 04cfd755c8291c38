"""Class-uniform sampling: centroids per class and tile, cached by label content, rare classes drawn
as often as common ones, crops placed around the drawn centroid, absent classes harmless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hmsa.data import sampling
from hmsa.data.labels import cityscapes_label_to_train_lut
from hmsa.data.transforms import train_transform


def _labels(embedded_data: Path) -> list[Path]:
    return sorted((embedded_data / "cityscapes/gtFine/train").rglob("*_gtFine_labelIds.png"))


def test_every_class_with_pixels_has_centroids(embedded_data: Path) -> None:
    files = _labels(embedded_data)
    lut = cityscapes_label_to_train_lut().copy()
    lut[lut == 16] = 255  # make one class absent ("train": no pixels), which must not crash
    table = sampling.build_centroids(files, lut, 19, tile=32, workers=2)
    present = set()
    for f in files:
        present |= {int(c) for c in np.unique(lut[np.asarray(Image.open(f))]) if c < 19}
    assert {c for c, pts in table.items() if pts} == present
    absent = set(range(19)) - present
    assert 16 in absent and all(table[c] == [] for c in absent)  # no pixels, no crash
    for c in present:
        for i, y, x in table[c]:  # each centroid lies in a tile that holds pixels of its class
            ty, tx = y // 32 * 32, x // 32 * 32
            tile = lut[np.asarray(Image.open(files[i]))][ty:ty + 32, tx:tx + 32]
            assert (tile == c).any()
    draws = {sampling.draw(np.random.default_rng(s), table) for s in range(300)}
    assert draws & set(table[5])  # thin poles are drawn


def test_draw_is_uniform_over_classes() -> None:
    table = {0: [(0, 1, 1)] * 1000, 1: [(1, 2, 2)], 2: []}
    picks = [sampling.draw(np.random.default_rng(s), table)[0] for s in range(2000)]
    assert 0.45 < np.mean(picks) < 0.55  # class 1 has 1 centroid vs 1000, still half of the draws
    assert sampling.draw(np.random.default_rng(0), {0: [], 1: []}) is None


def test_cache_is_reused(embedded_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, lut = _labels(embedded_data), cityscapes_label_to_train_lut()
    first = sampling.cached_centroids(files, lut, 19, 32, tmp_path)
    assert len(list(tmp_path.glob("centroids-*.json"))) == 1

    def no_rebuild(*a: object, **k: object) -> None:
        raise AssertionError("rebuilt despite the cache")

    monkeypatch.setattr(sampling, "build_centroids", no_rebuild)
    assert sampling.cached_centroids(files, lut, 19, 32, tmp_path) == first
    with pytest.raises(AssertionError):  # other label files -> other key -> rebuild
        sampling.cached_centroids(files[:1], lut, 19, 32, tmp_path)


def test_crop_contains_the_centroid() -> None:
    label = np.zeros((64, 128), np.uint8)
    label[49:52, 119:122] = 5  # a small object far from the image centre
    image = Image.fromarray(np.zeros((64, 128, 3), np.uint8))
    tf = train_transform((16, 32), scale_range=(1.0, 2.0), flip=True, color_jitter=0.0, blur_prob=0.0)
    hits = []
    for seed in range(20):
        torch.manual_seed(seed)
        hits.append(bool((tf(image, label, (50, 120))[1] == 5).any()))
    assert all(hits)
    misses = []
    for seed in range(20):  # without the centroid a 16x32 crop rarely contains it
        torch.manual_seed(seed)
        misses.append(not (tf(image, label)[1] == 5).any())
    assert any(misses)
