"""Loss terms: the mean over labelled pixels, and an all-ignored batch is 0, not NaN."""

from __future__ import annotations

import pytest
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


def test_per_scale_logits_at_their_own_resolution_are_upsampled_for_their_supervision() -> None:
    """forward_train leaves the 0.5 scale's logits at half resolution; the per-scale term (weight 0.05
    in the paper's recipe) scores them upsampled to the labels, and a weight of 0 never reads them."""
    g = torch.Generator().manual_seed(0)
    fused = torch.randn(2, 5, 8, 12, generator=g)
    half = torch.randn(2, 5, 4, 6, generator=g)
    target = torch.randint(0, 5, (2, 8, 12), generator=g)
    out = {"fused": fused, "aux": None, "per_scale": {0.5: half, 1.0: fused}}
    _, terms = total_loss(out, target, "cross_entropy", aux_weight=0.4, scale_weight=0.05)
    up = F.interpolate(half, size=(8, 12), mode="bilinear", align_corners=False)
    assert terms["loss/scale_0.5"] == pytest.approx(float(F.cross_entropy(up, target)))
    assert terms["loss/scale_1"] == pytest.approx(float(F.cross_entropy(fused, target)))
    _, unsupervised = total_loss(out, target, "cross_entropy", aux_weight=0.4, scale_weight=0.0)
    assert not any(k.startswith("loss/scale_") for k in unsupervised)
