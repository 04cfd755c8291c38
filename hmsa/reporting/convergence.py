"""Did each training stage converge? A table from the loss curves every training writes
(``<results>/<stage>/curves.csv``: step, loss, lr), for the report (``convergence.{md,csv}``), judged
by :data:`RULE`.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pandas as pd

#: the verdict's rule, as the report prints it
RULE = ("A run counts as converged when its loss is flat over the last fifth of the run: a straight line fitted "
        "to the logged losses of that fifth (each the mean over the batches since the point before) changes, "
        "from its first to its last step, by less than the scatter of the points around it (their standard "
        "deviation). The points are still noisy, so a trend smaller than that scatter cannot be told from noise "
        "with these points; a larger one can.")

#: columns of the table, in order
COLUMNS = ["stage", "iterations", "points in last fifth", "loss, 4th fifth", "loss, last fifth",
           "trend over last fifth", "scatter (std)", "verdict"]


def read_curve(path: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs of a ``curves.csv``."""
    with open(path, newline="") as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]


def assess(points: list[tuple[int, float]]) -> dict[str, object]:
    """The figures of one curve; verdict ``flat``, ``falling``, ``rising``, ``diverged`` (a NaN or infinite
    loss in the last fifth) or ``too few points``."""
    if not points:
        return {"verdict": "too few points"}
    total = points[-1][0]
    last = [(s, v) for s, v in points if s > 0.8 * total]
    fourth = [(s, v) for s, v in points if 0.6 * total < s <= 0.8 * total]
    row: dict[str, object] = {"iterations": total, "points in last fifth": len(last)}
    if len(last) < 4 or not fourth:
        return {**row, "verdict": "too few points"}
    if not all(math.isfinite(v) for _, v in last):
        return {**row, "verdict": "diverged"}  # a NaN / inf loss never converged
    xs, ys = [float(s) for s, _ in last], [v for _, v in last]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    trend = slope * (xs[-1] - xs[0])
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys, strict=True)]
    scatter = statistics.stdev(resid)
    verdict = "flat" if abs(trend) <= scatter else ("falling" if trend < 0 else "rising")
    return {**row, "loss, 4th fifth": statistics.fmean(v for _, v in fourth), "loss, last fifth": my,
            "trend over last fifth": trend, "scatter (std)": scatter, "verdict": verdict}


def convergence_table(pipeline: dict, results: Path) -> pd.DataFrame | None:
    """One row per training stage of ``pipeline`` (seeds expanded: ``hmsa.orchestration.pipeline.expand_seeds``) whose
    curves exist; None when none do."""
    rows = []
    for stage in pipeline["train"]:
        path = Path(results) / stage / "curves.csv"
        if path.exists():
            rows.append({"stage": stage, **assess(read_curve(path))})
    if not rows:
        return None
    return pd.DataFrame(rows).reindex(columns=COLUMNS)
