"""How good are the auto-labels (section 4, Figure 4)? Measured against the true labels of the coarse
images, which the embedded dataset knows (``<embedded>/truth/cityscapes``), for the teacher's
auto-labels AND the original coarse labels of the same images, so one can say whether auto-labels are
denser (coverage) and whether they are as accurate as the coarse labels where both exist.

Everything derives from one exact statistic: the joint pixel count over (true class, coarse label,
auto-label), with index K (= num_classes) meaning ignore / unlabelled. Counts of disjoint image sets
add up, so shards of a run merge exactly. Pure numpy (pandas only for :func:`quality_frame`).

Definitions, per source (coarse, autolabel):
- ``coverage``: labelled pixels / all pixels;
- ``accuracy``: correct / labelled pixels whose truth is not ignore; ``recall``: correct / true pixels;
- per class c: ``labelled`` (pixels labelled c), ``precision`` (of those with a known truth, the share
  truly c), ``recall`` (of the true c pixels, the share labelled c; unlabelled ones count as misses),
  ``mislabelled`` (of the true c pixels, the share labelled as ANOTHER class: what teaches a model trained
  on these labels to erase c — e.g. a pole labelled as the building behind it);
- ``*_both``: the same on the pixels that BOTH sources label.
A ratio with a zero denominator is ``None``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SOURCES = ("coarse", "autolabel")
_AXIS = {"coarse": 1, "autolabel": 2}  # axis of the joint counts that holds the source's label


def joint_counts(truth: np.ndarray, coarse: np.ndarray, auto: np.ndarray, num_classes: int) -> np.ndarray:
    """int64[K+1, K+1, K+1]: pixels by (true trainId, coarse trainId, auto-label trainId); every
    value >= K (255 = ignore / unlabelled) goes to index K."""
    if not truth.shape == coarse.shape == auto.shape:
        raise ValueError(f"label shapes differ: truth {truth.shape}, coarse {coarse.shape}, auto {auto.shape}")
    k1 = num_classes + 1
    t, c, a = (np.minimum(x.ravel().astype(np.int64), num_classes) for x in (truth, coarse, auto))
    return np.bincount((t * k1 + c) * k1 + a, minlength=k1**3).reshape(k1, k1, k1)


def to_cells(counts: np.ndarray) -> list[list[int]]:
    """Sparse JSON form: ``[[t, c, a, pixels], ...]`` for the non-zero cells."""
    return [[*map(int, idx), int(counts[idx])] for idx in zip(*np.nonzero(counts), strict=True)]


def from_cells(cells: list[list[int]], num_classes: int) -> np.ndarray:
    k1 = num_classes + 1
    counts = np.zeros((k1, k1, k1), np.int64)
    for t, c, a, n in cells:
        counts[t, c, a] += n
    return counts


def merge_cells(parts: list[list[list[int]]], num_classes: int) -> np.ndarray:
    """Sum of the joint counts of disjoint image sets (shards): exact."""
    total = np.zeros((num_classes + 1,) * 3, np.int64)
    for cells in parts:
        total += from_cells(cells, num_classes)
    return total


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _source(counts: np.ndarray, source: str, names: list[str]) -> dict[str, Any]:
    k = len(names)
    other = 3 - _AXIS[source]  # the axis summed away: the other source's label
    m = counts.sum(axis=other)  # [truth, this label], (K+1)x(K+1)
    b = counts[:, :k, :k].sum(axis=other)  # the same on pixels both sources label, (K+1)xK
    per_class = {}
    for c, name in enumerate(names):
        per_class[name] = {
            "true": int(m[c].sum()), "labelled": int(m[:, c].sum()),
            "precision": _ratio(m[c, c], m[:k, c].sum()), "recall": _ratio(m[c, c], m[c].sum()),
            "mislabelled": _ratio(m[c, :k].sum() - m[c, c], m[c].sum()),
            "precision_both": _ratio(b[c, c], b[:k, c].sum()), "recall_both": _ratio(b[c, c], b[c].sum())}
    correct, correct_both = np.trace(m[:k, :k]), np.trace(b[:k, :k])
    return {"labelled": int(m[:, :k].sum()), "coverage": _ratio(m[:, :k].sum(), m.sum()),
            "accuracy": _ratio(correct, m[:k, :k].sum()), "recall": _ratio(correct, m[:k].sum()),
            "mislabelled": _ratio(m[:k, :k].sum() - correct, m[:k].sum()),
            "accuracy_both": _ratio(correct_both, b[:k].sum()), "recall_both": _ratio(correct_both, b[:k].sum()),
            "per_class": per_class}


def summarize(counts: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The manifest's ``quality`` section (without provenance) from the joint counts."""
    k = len(class_names)
    if counts.shape != (k + 1,) * 3:
        raise ValueError(f"joint counts of shape {counts.shape} do not fit {k} classes")
    both = counts[:, :k, :k].sum()
    return {"classes": list(class_names), "pixels": int(counts.sum()),
            "true_pixels": int(counts[:k].sum()),
            "both": {"pixels": int(both), "fraction": _ratio(both, counts.sum())},
            "sources": {s: _source(counts, s, list(class_names)) for s in SOURCES},
            "joint_counts": to_cells(counts)}


METRICS = ("labelled", "precision", "recall", "mislabelled", "precision_both", "recall_both")


def quality_frame(quality: dict[str, Any]) -> Any:
    """A manifest's ``quality`` as a pandas DataFrame: one row per class and a last row ``all``;
    columns ``true_pixels``, then ``<source>_<metric>`` for metric in labelled, precision, recall,
    mislabelled, precision_both, recall_both and source in coarse, autolabel (coarse beside auto-label), then
    ``<source>_coverage`` (``all`` row only). In the ``all`` row, precision is the pixel accuracy."""
    import pandas as pd

    names = quality["classes"]
    sources = quality["sources"]
    rows = []
    for name in names:
        row: dict[str, Any] = {"class": name, "true_pixels": sources[SOURCES[0]]["per_class"][name]["true"]}
        for metric in METRICS:
            for s in SOURCES:
                row[f"{s}_{metric}"] = sources[s]["per_class"][name][metric]
        rows.append(row)
    overall: dict[str, Any] = {"class": "all", "true_pixels": quality["true_pixels"]}
    overall_keys = ("labelled", "accuracy", "recall", "mislabelled", "accuracy_both", "recall_both")
    for metric, key in zip(METRICS, overall_keys, strict=True):
        for s in SOURCES:
            overall[f"{s}_{metric}"] = sources[s][key]
    for s in SOURCES:
        overall[f"{s}_coverage"] = sources[s]["coverage"]
    rows.append(overall)
    frame = pd.DataFrame(rows).set_index("class")
    # None -> NaN in the ratio columns; pixel counts stay integers
    ratios = [c for c in frame.columns if not c.endswith(("_labelled", "true_pixels"))]
    frame[ratios] = frame[ratios].astype(float)
    return frame
