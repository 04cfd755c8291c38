"""The convergence verdict of a loss curve (hmsa/reporting/convergence.py): a trend beyond the scatter of the
last fifth is "falling" / "rising", one within it "flat"."""

from __future__ import annotations

import numpy as np

from hmsa.reporting.convergence import assess


def _curve(losses: np.ndarray) -> list[tuple[int, float]]:
    return [(10 * (i + 1), float(v)) for i, v in enumerate(losses)]


def test_a_falling_a_rising_and_a_flat_curve() -> None:
    rng = np.random.default_rng(0)
    x = np.arange(100)
    assert assess(_curve(3.0 - 0.02 * x + rng.normal(0, 0.05, 100)))["verdict"] == "falling"
    assert assess(_curve(1.0 + 0.02 * x + rng.normal(0, 0.05, 100)))["verdict"] == "rising"
    flat = assess(_curve(np.r_[np.linspace(3, 1, 60), np.full(40, 1.0)] + rng.normal(0, 0.1, 100)))
    assert flat["verdict"] == "flat" and flat["points in last fifth"] == 20 and flat["iterations"] == 1000
    assert abs(flat["loss, last fifth"] - 1.0) < 0.1


def test_a_slope_hidden_in_large_noise_is_flat_and_a_short_curve_undecided() -> None:
    rng = np.random.default_rng(1)
    x = np.arange(100)
    assert assess(_curve(1.0 - 0.0005 * x + rng.normal(0, 0.3, 100)))["verdict"] == "flat"
    assert assess(_curve(np.array([2.0, 1.5, 1.2, 1.0, 0.9])))["verdict"] == "too few points"
    assert assess([])["verdict"] == "too few points"
    assert assess(_curve(np.r_[np.ones(90), np.full(10, np.nan)]))["verdict"] == "diverged"
