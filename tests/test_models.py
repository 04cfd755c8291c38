"""The paper's models (section 3.1) and the multi-scale fusion functions (section 3, eq. 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hmsa.models import MODELS, build_model
from hmsa.models.multiscale import (
    forward_train,
    fuse_avg,
    fuse_explicit,
    fuse_hierarchical,
    fuse_max,
    predict_multiscale,
)

TINY = ["hrnet_ocr_tiny", "deeplabv3plus_tiny"]


def up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", TINY)
def test_forward_shapes_and_every_parameter_learns(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 7)
    x = torch.randn(2, 3, 48, 96)  # not a multiple of 32: HRNet pads internally
    out = model(x)
    assert out["logits"].shape == (2, 7, 48, 96)
    assert out["attn_logit"].shape == (2, 1, 48, 96)
    assert all(torch.isfinite(v).all() for v in out.values())
    train = forward_train(model, x, "hierarchical", [0.5, 1.0])
    loss = train["fused"].logsumexp(1).mean() + (train["aux"].logsumexp(1).mean() if train["aux"] is not None else 0)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]


@pytest.mark.parametrize("name", TINY)
def test_without_attention_has_no_attention_head(name: str) -> None:
    model = build_model(name, 5, attention=False).eval()
    assert "attn_logit" not in model(torch.randn(1, 3, 32, 64))
    with pytest.raises(ValueError, match="attention=True"):
        predict_multiscale(model, torch.randn(1, 3, 32, 64), [0.5, 1.0], "hierarchical")


def test_registry_and_unknown_model() -> None:
    assert set(TINY) | {"hrnet_ocr", "deeplabv3plus_r50"} <= set(MODELS)
    with pytest.raises(KeyError, match="known"):
        build_model("segformer", 19)


def test_eq1_on_hand_made_tensors() -> None:
    lo, hi = torch.full((1, 2, 2, 2), 4.0), torch.full((1, 2, 4, 4), 1.0)
    a = torch.full((1, 1, 2, 2), 0.25)
    fused = fuse_hierarchical({0.5: lo, 1.0: hi}, {0.5: a, 1.0: torch.zeros(1, 1, 4, 4)})
    # U(4 * 0.25) + (1 - U(0.25)) * 1 = 1 + 0.75
    assert torch.allclose(fused, torch.full((1, 2, 4, 4), 1.75))


def test_chain_equals_step_by_step_definition() -> None:
    torch.manual_seed(1)
    sizes = {0.25: (2, 4), 0.5: (4, 8), 1.0: (8, 16), 2.0: (16, 32)}
    logits = {s: torch.randn(1, 3, *hw) for s, hw in sizes.items()}
    attn = {s: torch.rand(1, 1, *hw) for s, hw in sizes.items()}
    p = up(logits[2.0], sizes[1.0])
    p = attn[1.0] * logits[1.0] + (1 - attn[1.0]) * p
    for s in (0.5, 0.25):
        p = up(attn[s] * logits[s], sizes[1.0]) + (1 - up(attn[s], sizes[1.0])) * p
    assert torch.allclose(fuse_hierarchical(logits, attn), p, atol=1e-6)


def test_attention_extremes() -> None:
    sizes = {0.5: (4, 8), 1.0: (8, 16), 2.0: (16, 32)}
    logits = {s: torch.randn(1, 3, *hw) for s, hw in sizes.items()}
    ones = {s: torch.ones(1, 1, *hw) for s, hw in sizes.items()}
    zeros = {s: torch.zeros(1, 1, *hw) for s, hw in sizes.items()}
    assert torch.allclose(fuse_hierarchical(logits, ones), up(logits[0.5], sizes[1.0]), atol=1e-6)
    assert torch.allclose(fuse_hierarchical(logits, zeros), up(logits[2.0], sizes[1.0]), atol=1e-6)


def test_bad_scale_sets_raise() -> None:
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="at least one"):
        fuse_hierarchical({}, {})
    with pytest.raises(ValueError, match="1.0"):
        fuse_hierarchical({0.5: x}, {0.5: x[:, :1]})
    with pytest.raises(ValueError, match="do not match"):
        fuse_hierarchical({1.0: x, 0.5: x}, {1.0: x[:, :1]})
    with pytest.raises(ValueError, match="pair"):
        forward_train(build_model("deeplabv3plus_tiny", 3), torch.randn(1, 3, 32, 32), "hierarchical",
                      [0.5, 1.0, 2.0])


def test_explicit_avg_max() -> None:
    logits = {0.5: torch.randn(1, 3, 4, 4), 1.0: torch.randn(1, 3, 8, 8)}
    same = {0.5: torch.zeros(1, 1, 4, 4), 1.0: torch.zeros(1, 1, 8, 8)}
    expected_avg = (up(logits[0.5], (8, 8)) + logits[1.0]) / 2
    assert torch.allclose(fuse_explicit(logits, same), expected_avg, atol=1e-6)  # equal weights = average
    assert torch.allclose(fuse_avg(logits), expected_avg, atol=1e-6)
    assert torch.allclose(fuse_max(logits), torch.maximum(up(logits[0.5], (8, 8)), logits[1.0]))


def test_trained_on_pair_predicts_with_four_scales() -> None:
    torch.manual_seed(0)
    model = build_model("hrnet_ocr_tiny", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, 32, 64), torch.randint(0, 4, (2, 32, 64))
    for _ in range(2):
        out = forward_train(model, x, "hierarchical", [0.5, 1.0])
        loss = F.cross_entropy(out["fused"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = predict_multiscale(model, x, [0.25, 0.5, 1.0, 2.0], "hierarchical", flip=True)
    assert pred.shape == (2, 4, 32, 64) and torch.isfinite(pred).all()


def test_trunk_weights_from_a_local_file(tmp_path: Path) -> None:
    # The local-weights path of the pretrained trunks (the tiny models have none: see below), on a
    # small timm trunk through the same DeepLabV3Plus / TimmTrunk code as deeplabv3plus_r50.
    import timm

    from hmsa.models.deeplab import DeepLabV3Plus

    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = DeepLabV3Plus(3, trunk="resnet18", aspp=16, low=8, decoder=16, head_mid=8, weights=str(path))
    assert torch.equal(model.trunk.body.conv1.weight, ref.conv1.weight)
    fresh = DeepLabV3Plus(3, trunk="resnet18", aspp=16, low=8, decoder=16, head_mid=8)
    assert not torch.equal(fresh.trunk.body.conv1.weight, ref.conv1.weight)


# CPU-sized variants (hmsa/models/cpu_trunks.py): the paper's structures, narrow and shallow.
# Measured with 19 classes: 0.30 M and 0.58 M (the former tiny models: 1.75 M and 12.3 M).
TINY_MAX_PARAMS = {"hrnet_ocr_tiny": 400_000, "deeplabv3plus_tiny": 750_000}


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_small(name: str) -> None:
    model = build_model(name, 19)
    assert sum(p.numel() for p in model.parameters()) < TINY_MAX_PARAMS[name]


def test_tiny_hrnet_keeps_four_fused_branches() -> None:
    from hmsa.models.backbones import TimmTrunk

    model = build_model("hrnet_ocr_tiny", 19)
    assert model.trunk.reductions == [4, 8, 16, 32]
    feats = model.trunk(torch.randn(2, 3, 64, 128))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 32), (8, 16), (4, 8), (2, 4)]
    assert [f.shape[1] for f in feats] == model.trunk.channels
    body = model.trunk.body
    assert isinstance(model.trunk, TimmTrunk) and type(body).__name__ == "HighResolutionNetFeatures"
    # HRNetV2: stages 2, 3, 4 run 2, 3, 4 parallel branches; each module ends in the multi-resolution
    # fusion (every branch into every other).
    for stage, branches in ((body.stage2, 2), (body.stage3, 3), (body.stage4, 4)):
        last = stage[-1]
        assert last.num_branches == branches and len(last.fuse_layers) == branches
        assert all(len(f) == branches for f in last.fuse_layers)


def test_tiny_deeplab_is_output_stride_8() -> None:
    from hmsa.models.backbones import TimmTrunk

    model = build_model("deeplabv3plus_tiny", 19)
    assert model.trunk.reductions == [4, 8]
    low, high = model.trunk(torch.randn(2, 3, 64, 128))
    assert tuple(low.shape[-2:]) == (16, 32) and tuple(high.shape[-2:]) == (8, 16)
    assert [low.shape[1], high.shape[1]] == model.trunk.channels
    body = model.trunk.body
    assert isinstance(model.trunk, TimmTrunk)
    # BasicBlocks; the last two stages dilated instead of strided.
    assert body.layer4[0].conv2.dilation == (4, 4) and body.layer3[0].conv2.dilation == (2, 2)
    assert type(body.layer1[0]).__name__ == "BasicBlock"


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_refuse_pretrained_weights(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=name):
        build_model(name, 19, pretrained=True)
    with pytest.raises(ValueError, match=name):
        build_model(name, 19, weights=str(tmp_path / "trunk.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("name,classes", [("hrnet_ocr", 19), ("hrnet_ocr", 66), ("deeplabv3plus_r50", 65)])
def test_full_size_models_forward_backward(name: str, classes: int) -> None:
    model = build_model(name, classes)
    if name == "hrnet_ocr":
        assert sum(model.trunk.channels) == 720  # 48 + 96 + 192 + 384
    out = forward_train(model, torch.randn(2, 3, 64, 128), "hierarchical", [0.5, 1.0])
    assert out["fused"].shape == (2, classes, 64, 128) and torch.isfinite(out["fused"]).all()
    loss = out["fused"].logsumexp(1).mean() + (out["aux"].logsumexp(1).mean() if out["aux"] is not None else 0)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
