"""Multi-scale training: BatchNorm running statistics come from the 1.0 scale only, and the explicit
baseline is Chen et al.'s joint attention (every scale's weight depends on every scale's features)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hmsa.models import build_model
from hmsa.models.heads import JointScaleAttention
from hmsa.models.multiscale import forward_train, frozen_running_stats, predict_multiscale

TINY = ["hrnet_ocr_tiny", "deeplabv3plus_tiny"]


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("sync_bn", [False, True])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_forward_at_other_scale_leaves_running_stats(scale: float, sync_bn: bool) -> None:
    """Also with SyncBatchNorm (the paper recipe under DDP; without a process group it runs locally)."""
    torch.manual_seed(0)
    model = build_model("hrnet_ocr_tiny", 5).train()
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    before = _bn_state(model)
    assert before, "the model has BatchNorm layers"
    x = torch.randn(2, 3, round(32 * scale), round(64 * scale))
    with frozen_running_stats(model):
        model(x)
    assert _changed(before, _bn_state(model)) == []
    # and the layers are back to tracking: a plain forward updates every statistic
    model(x)
    assert set(_changed(before, _bn_state(model))) == set(before)


@pytest.mark.parametrize(("name", "method", "scales"), [("hrnet_ocr_tiny", "hierarchical", [0.5, 1.0]),
                                                       ("deeplabv3plus_tiny", "explicit", [0.5, 1.0, 2.0])])
def test_multiscale_training_stats_equal_a_scale_1_forward(name: str, method: str, scales: list[float]) -> None:
    """One training step's running statistics equal those of ONE train-mode forward at scale 1.0
    (the other scales' forwards contribute nothing); with the authors' "every_scale" they differ."""
    torch.manual_seed(0)
    kwargs = {"explicit_scales": tuple(scales)} if method == "explicit" else {}
    model = build_model(name, 5, **kwargs).train()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    reference = build_model(name, 5, **kwargs).train()
    reference.load_state_dict(initial)
    x = torch.randn(2, 3, 32, 64)
    forward_train(model, x, method, scales)
    reference(x)
    # the joint explicit head runs once per step, on every scale's features: not a per-scale forward
    trunk = [k for k in _bn_state(model) if not k.startswith("scale_attn.")]
    ours, ref = _bn_state(model), _bn_state(reference)
    assert [k for k in trunk if not torch.allclose(ours[k].float(), ref[k].float(), atol=1e-6)] == []

    authors = build_model(name, 5, **kwargs).train()  # the authors' code: every forward updates them
    authors.load_state_dict(initial)
    forward_train(authors, x, method, scales, bn_stats="every_scale")
    after = _bn_state(authors)
    counters = [k for k in trunk if k.endswith("num_batches_tracked")]
    assert counters and all(int(after[k]) - int(initial[k]) == len(scales) for k in counters)


def test_running_stats_come_from_the_scale_1_inputs_only() -> None:
    """A BatchNorm right at the input: its running mean after training equals the mean of what the
    1.0 forward saw, although the 0.5 forward (other pixels, shifted) ran in train mode too."""

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3, momentum=1.0)
            self.attn_head = None

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            y = self.bn(x + (10.0 if x.shape[-1] < 64 else 0.0))  # the 0.5 scale looks very different
            return {"logits": y, "attn_logit": y[:, :1]}

    probe = Probe().train()
    x = torch.randn(2, 3, 32, 64)
    forward_train(probe, x, "hierarchical", [0.5, 1.0])
    assert torch.allclose(probe.bn.running_mean, x.mean((0, 2, 3)), atol=1e-5)


def test_joint_attention_every_weight_depends_on_every_scale() -> None:
    """Chen et al.: the weight map of each scale has a gradient w.r.t. the features of EVERY scale."""
    torch.manual_seed(0)
    scales = (0.5, 1.0, 2.0)
    head = JointScaleAttention(4, 8, scales).train()
    feats = [torch.randn(2, 4, 6, 10, requires_grad=True) for _ in scales]
    weights = torch.softmax(head(feats), dim=1)  # N×S×h×w, softmax across scales
    for i, s in enumerate(scales):
        grads = torch.autograd.grad(weights[:, i].sum() * 1.0 + (weights[:, i] ** 2).sum(), feats,
                                    retain_graph=True)
        for j, g in enumerate(grads):
            assert g.abs().sum() > 0, f"weight of scale {s} has no gradient w.r.t. scale {scales[j]}'s features"


def test_explicit_model_trains_end_to_end_and_refuses_other_scale_sets() -> None:
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_tiny", 5, explicit_scales=(0.5, 1.0, 2.0))
    x, y = torch.randn(2, 3, 32, 64), torch.randint(0, 5, (2, 32, 64))
    out = forward_train(model, x, "explicit", [0.5, 1.0, 2.0])
    nn.functional.cross_entropy(out["fused"], y).backward()
    assert model.scale_attn is not None and model.attn_head is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.scale_attn.parameters())
    model.eval()
    with torch.no_grad():
        assert predict_multiscale(model, x, [0.5, 1.0, 2.0], "explicit", flip=True).shape == (2, 5, 32, 64)
        with pytest.raises(ValueError, match="trained on scales"):
            predict_multiscale(model, x, [0.25, 0.5, 1.0, 2.0], "explicit")
        with pytest.raises(ValueError, match="hierarchical"):
            predict_multiscale(model, x, [0.5, 1.0], "hierarchical")
    hierarchical = build_model("deeplabv3plus_tiny", 5).eval()
    with pytest.raises(ValueError, match="explicit"), torch.no_grad():
        predict_multiscale(hierarchical, x, [0.5, 1.0, 2.0], "explicit")
