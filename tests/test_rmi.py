"""RMI against a direct small-case computation, and finite on degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmsa.training.rmi import EPS, rmi_loss, rmi_lower_bound


def _direct(probs: np.ndarray, labels: np.ndarray, r: int) -> np.ndarray:
    """Loops over windows, numpy covariances and slogdet: the definition written out."""
    n, c, h, w = probs.shape
    out = np.zeros((n, c))
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
            m = Y.shape[1]
            sy, sp, syp = Y @ Y.T / m, P @ P.T / m + EPS * np.eye(r * r), Y @ P.T / m
            cond = sy - syp @ np.linalg.inv(sp) @ syp.T
            out[i, k] = 0.5 * np.linalg.slogdet(cond + EPS * np.eye(r * r))[1]
    return out


def test_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((2, 2, 6, 7))
    labels = (rng.random((2, 2, 6, 7)) > 0.5).astype(np.float64)
    ours = rmi_lower_bound(torch.from_numpy(probs), torch.from_numpy(labels), radius=3).numpy()
    assert np.allclose(ours, _direct(probs, labels, 3), rtol=1e-8, atol=1e-8)


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
    if case == "tiny":
        logits = torch.randn(2, 4, 4, 4, requires_grad=True)
        target = target[:, :4, :4]
    loss = rmi_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
