"""RMI against direct small-case computations with the reference normalisation (ZJULearning/RMI,
losses/rmi/rmi.py; NVIDIA/semantic-segmentation, loss/rmi.py), and finite on degenerate inputs."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from hmsa.training.rmi import EPS, PROB_CLIP, rmi_loss, rmi_lower_bound


def _direct(probs: np.ndarray, labels: np.ndarray, r: int) -> np.ndarray:
    """Loops over windows, numpy scatter matrices (centred, not divided by the number of windows),
    an explicit inverse and slogdet: the references' definition written out."""
    n, c, h, w = probs.shape
    out = np.zeros((n, c))
    eye = np.eye(r * r)
    for i in range(n):
        for k in range(c):
            ys, ps = [], []
            for y0 in range(h - r + 1):
                for x0 in range(w - r + 1):
                    ys.append(labels[i, k, y0:y0 + r, x0:x0 + r].ravel())
                    ps.append(probs[i, k, y0:y0 + r, x0:x0 + r].ravel())
            Y, P = np.array(ys).T, np.array(ps).T
            Y = Y - Y.mean(1, keepdims=True)
            P = P - P.mean(1, keepdims=True)
            cond = Y @ Y.T - (Y @ P.T) @ np.linalg.inv(P @ P.T + EPS * eye) @ (Y @ P.T).T
            out[i, k] = 0.5 * np.linalg.slogdet(cond + EPS * eye)[1]
    return out


def _avg_pool(x: np.ndarray, s: int) -> np.ndarray:
    """s×s average, stride s, zero padding s // 2 counted in the average (PyTorch's default)."""
    pad = s // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (x.shape[2] + 2 * pad - s) // s + 1, (x.shape[3] + 2 * pad - s) // s + 1
    out = np.zeros(x.shape[:2] + (oh, ow))
    for a in range(oh):
        for b in range(ow):
            out[:, :, a, b] = xp[:, :, a * s:a * s + s, b * s:b * s + s].mean((2, 3))
    return out


def _direct_bce(logits: np.ndarray, target: np.ndarray, ignore: int) -> float:
    """Sum over valid pixels of the BCE summed over classes, over (valid pixels + 1)."""
    n, c, h, w = logits.shape
    total, count = 0.0, 0
    for i in range(n):
        for a in range(h):
            for b in range(w):
                if target[i, a, b] == ignore:
                    continue
                count += 1
                for k in range(c):
                    p = 1.0 / (1.0 + np.exp(-logits[i, k, a, b]))
                    y = float(target[i, a, b] == k)
                    total -= y * np.log(p) + (1 - y) * np.log(1 - p)
    return total / (count + 1)


def _example(seed: int = 0, shape: tuple[int, int, int, int] = (2, 3, 13, 14)):
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    logits = rng.normal(size=shape) * 2
    target = rng.integers(0, c, size=(n, h, w))
    target[rng.random((n, h, w)) < 0.2] = 255
    return logits, target


def test_lower_bound_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((2, 2, 6, 7))
    labels = (rng.random((2, 2, 6, 7)) > 0.5).astype(np.float64)
    ours = rmi_lower_bound(torch.from_numpy(probs), torch.from_numpy(labels), radius=3).numpy()
    assert np.allclose(ours, _direct(probs, labels, 3), rtol=1e-8, atol=1e-8)


def test_bce_part_matches_direct_computation() -> None:
    logits, target = _example()
    # λ = 1 with the convex weighting leaves the BCE part alone
    ours = rmi_loss(torch.from_numpy(logits), torch.from_numpy(target), weight_lambda=1.0)
    assert abs(float(ours) - _direct_bce(logits, target, 255)) < 1e-10


def test_default_pooling_and_weighting_end_to_end() -> None:
    params = inspect.signature(rmi_loss).parameters
    assert (params["pool"].default, params["pool_way"].default, params["radius"].default) == (4, "avg", 3)
    assert (params["weight_lambda"].default, params["convex"].default) == (0.5, True)
    logits, target = _example(1, (2, 3, 17, 21))
    n, c, h, w = logits.shape
    valid = (target != 255)[:, None]
    onehot = (target[:, None] == np.arange(c)[None, :, None, None]) * valid
    probs = 1.0 / (1.0 + np.exp(-logits)) * valid + PROB_CLIP
    rmi = _direct(_avg_pool(probs, 4), _avg_pool(onehot.astype(np.float64), 4), 3).mean(0) / 9
    expected = 0.5 * _direct_bce(logits, target, 255) + 0.5 * rmi.sum()
    ours = rmi_loss(torch.from_numpy(logits), torch.from_numpy(target), ignore_index=255)
    assert abs(float(ours) - expected) < 1e-9 * max(1.0, abs(expected))


def test_other_pool_ways_and_lambda_way() -> None:
    logits, target = map(torch.from_numpy, _example(2, (2, 3, 24, 24)))
    for way in ("max", "interpolate"):
        assert torch.isfinite(rmi_loss(logits, target, pool_way=way))
    full = rmi_loss(logits, target, convex=False)
    bce = rmi_loss(logits, target, weight_lambda=1.0)
    rmi_half = rmi_loss(logits, target) - 0.5 * bce  # (1 − λ)·RMI with λ = 0.5
    assert torch.allclose(full, bce + rmi_half, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError):
        rmi_loss(logits, target, pool_way="median")


def test_better_prediction_lower_loss() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 24, 24))
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 8 - 4
    bad = torch.randn(2, 3, 24, 24)
    assert rmi_loss(good, target) < rmi_loss(bad, target)


@pytest.mark.parametrize("case", ["one_class", "all_ignore", "tiny"])
def test_finite_on_degenerate_inputs(case: str) -> None:
    logits = torch.randn(2, 4, 12, 12, requires_grad=True)
    target = {"one_class": torch.zeros(2, 12, 12, dtype=torch.long),
              "all_ignore": torch.full((2, 12, 12), 255, dtype=torch.long),
              "tiny": torch.randint(0, 4, (2, 12, 12))}[case]
    if case == "tiny":  # 4×4 pools to 2×2: no 3×3 neighbourhood, the BCE part alone remains
        logits = torch.randn(2, 4, 4, 4, requires_grad=True)
        target = target[:, :4, :4]
    loss = rmi_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    if case == "tiny":
        assert torch.allclose(loss, 0.5 * rmi_loss(logits, target, weight_lambda=1.0))
