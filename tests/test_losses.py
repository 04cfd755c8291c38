"""Loss terms: the mean over labelled pixels, and an all-ignored batch is 0, not NaN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hmsa.training.losses import IGNORE_INDEX, cross_entropy, total_loss


def test_cross_entropy_is_the_mean_over_labelled_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 6, generator=g)
    target = torch.randint(0, 5, (2, 4, 6), generator=g)
    target[0, :2] = IGNORE_INDEX
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert torch.allclose(cross_entropy(logits, target), expected)


def test_a_batch_without_a_labelled_pixel_gives_zero_loss_and_zero_gradients() -> None:
    logits = torch.randn(2, 5, 4, 6, requires_grad=True)
    target = torch.full((2, 4, 6), IGNORE_INDEX)
    assert torch.isnan(F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX))  # what PyTorch gives
    out = {"fused": logits, "aux": logits * 2, "per_scale": {0.5: logits, 1.0: logits}}
    loss, terms = total_loss(out, target, "cross_entropy", aux_weight=0.4, scale_weight=0.05)
    loss.backward()
    assert float(loss.detach()) == 0.0 and all(v == 0.0 for v in terms.values())
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
