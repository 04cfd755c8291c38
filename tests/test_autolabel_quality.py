"""Auto-label and coarse-label quality against the truth: numbers checked on a hand-made case, counts
that merge exactly across shards, and the table the report reads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hmsa.autolabel_quality import from_cells, joint_counts, merge_cells, quality_frame, summarize, to_cells

NAMES = ["a", "b", "c"]
X = 255  # ignore (truth) / unlabelled (labels)
TRUTH = np.array([[0, 0, 1, 1], [2, 2, X, 1]], np.uint8)
COARSE = np.array([[0, X, X, 1], [X, 2, 1, X]], np.uint8)  # (1,2) is labelled where the truth is ignore
AUTO = np.array([[0, 1, 1, 0], [2, 2, 0, 1]], np.uint8)


def _quality() -> dict:
    return summarize(joint_counts(TRUTH, COARSE, AUTO, 3), NAMES)


def test_overall_numbers_by_hand() -> None:
    q = _quality()
    assert q["pixels"] == 8 and q["true_pixels"] == 7
    assert q["both"] == {"pixels": 4, "fraction": 0.5}
    coarse, auto = q["sources"]["coarse"], q["sources"]["autolabel"]
    assert coarse["labelled"] == 4 and coarse["coverage"] == 0.5
    assert coarse["accuracy"] == 1.0  # 3 judged pixels, all right; the 4th has no truth
    assert coarse["recall"] == pytest.approx(3 / 7)
    assert auto["labelled"] == 8 and auto["coverage"] == 1.0
    assert auto["accuracy"] == pytest.approx(5 / 7) and auto["recall"] == pytest.approx(5 / 7)
    # where both label (and the truth is known): coarse 3/3, auto-labels 2/3
    assert coarse["accuracy_both"] == 1.0 and auto["accuracy_both"] == pytest.approx(2 / 3)


def test_per_class_numbers_by_hand() -> None:
    coarse = _quality()["sources"]["coarse"]["per_class"]
    auto = _quality()["sources"]["autolabel"]["per_class"]
    assert coarse["b"] == {"true": 3, "labelled": 2, "precision": 1.0, "recall": pytest.approx(1 / 3),
                           "mislabelled": 0.0, "precision_both": 1.0, "recall_both": 1.0}
    assert auto["a"] == {"true": 2, "labelled": 3, "precision": 0.5, "recall": 0.5, "mislabelled": 0.5,
                         "precision_both": 0.5, "recall_both": 1.0}  # 1 of 3 has no truth
    # mislabelled: true b pixels the auto-labels call a (1 of 3); the coarse labels leave them unlabelled
    assert auto["b"]["mislabelled"] == pytest.approx(1 / 3) and coarse["a"]["mislabelled"] == 0.0
    assert auto["b"]["precision"] == pytest.approx(2 / 3) and auto["b"]["recall"] == pytest.approx(2 / 3)
    # in the both-set auto-labels say b only where the truth is ignore: no precision, and miss the true b
    assert auto["b"]["precision_both"] is None and auto["b"]["recall_both"] == 0.0
    assert auto["c"]["precision"] == auto["c"]["recall"] == 1.0


def test_counts_of_parts_merge_exactly() -> None:
    halves = [joint_counts(TRUTH[:, s], COARSE[:, s], AUTO[:, s], 3) for s in (slice(0, 2), slice(2, 4))]
    merged = merge_cells([to_cells(h) for h in halves], 3)
    assert np.array_equal(merged, joint_counts(TRUTH, COARSE, AUTO, 3))
    assert np.array_equal(from_cells(to_cells(merged), 3), merged)
    assert summarize(merged, NAMES) == _quality()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        joint_counts(TRUTH, COARSE[:, :3], AUTO, 3)
    with pytest.raises(ValueError, match="do not fit"):
        summarize(joint_counts(TRUTH, COARSE, AUTO, 3), ["a", "b"])
    # a label value beyond the classes (e.g. an id the table does not know) counts as unlabelled
    odd = joint_counts(TRUTH, np.full_like(COARSE, 7), AUTO, 3)
    assert summarize(odd, NAMES)["sources"]["coarse"]["labelled"] == 0


def test_quality_frame() -> None:
    frame = quality_frame(_quality())
    assert list(frame.index) == [*NAMES, "all"]
    assert list(frame.columns[:5]) == ["true_pixels", "coarse_labelled", "autolabel_labelled",
                                       "coarse_precision", "autolabel_precision"]
    assert frame.loc["all", "autolabel_precision"] == pytest.approx(5 / 7)  # the pixel accuracy
    assert frame.loc["all", "autolabel_mislabelled"] == pytest.approx(2 / 7)
    assert frame.loc["all", "coarse_mislabelled"] == 0
    assert frame.loc["b", "autolabel_mislabelled"] == pytest.approx(1 / 3)
    assert frame.loc["all", "coarse_coverage"] == 0.5 and math.isnan(frame.loc["a", "coarse_coverage"])
    assert math.isnan(frame.loc["b", "autolabel_precision_both"])
    assert frame.loc["b", "coarse_labelled"] == 2 and frame["true_pixels"].tolist() == [2, 3, 2, 7]
