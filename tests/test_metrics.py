"""Confusion-matrix mIoU and the deterministic batch order."""

import numpy as np
import torch

from hmsa.evaluation.metrics import confusion, iou_per_class, summarize
from hmsa.training.batches import IterationBatches, sample_key


def test_confusion_ignores_255_and_counts_pixels() -> None:
    target = torch.tensor([[0, 1, 255], [2, 2, 1]])
    pred = torch.tensor([[0, 2, 0], [2, 2, 1]])
    conf = confusion(pred, target, 3)
    assert conf.sum() == 5
    assert conf[1, 2] == 1 and conf[2, 2] == 2 and conf[0, 0] == 1


def test_iou_matches_hand_computation() -> None:
    conf = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    iou = iou_per_class(conf)
    assert np.isclose(iou[0], 3 / 4) and np.isclose(iou[1], 2 / 5)
    assert iou[2] == 0.0  # predicted but absent: counts as 0
    s = summarize(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert s["per_class"]["c"] is None  # absent from GT and prediction: left out of the mean
    assert np.isclose(s["miou"], (3 / 4 + 2 / 3) / 2)


def test_batches_resume_identically_and_ranks_disjoint() -> None:
    full = list(IterationBatches(3, [10], 0.0, 2, 0, 8))
    resumed = list(IterationBatches(3, [10], 0.0, 2, 5, 8))
    assert resumed == full[5:]
    r0 = list(IterationBatches(3, [10], 0.0, 2, 0, 2, rank=0, world_size=2))
    r1 = list(IterationBatches(3, [10], 0.0, 2, 0, 2, rank=1, world_size=2))
    first_epoch = [k[1] for b in (r0[0], r1[0], r0[1]) for k in b] + [k[1] for k in r1[1]]
    assert sorted(first_epoch[:8]) == sorted(set(first_epoch[:8]))  # no image twice within an epoch


def test_extra_pool_probability() -> None:
    picks = [sample_key(0, g, [5, 5], 0.5)[0] for g in range(2000)]
    assert 0.45 < sum(picks) / len(picks) < 0.55
    assert all(sample_key(0, g, [5, 5], 0.0)[0] == 0 for g in range(100))
