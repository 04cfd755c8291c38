"""The paper's findings as claims, checked over training seeds.

Each claim is a difference of table cells (e.g. Table 2 row 4 − row 3: the MS-attention gain with
auto-labels). It is computed per seed — every row of one seed comes from models trained with that
seed — then summarised as mean ± sample standard deviation, beside the same difference of the
paper's numbers. Verdict: *holds* when the mean is positive and larger than one standard deviation,
*contradicted* when it is negative and larger than one standard deviation in size, *within noise*
otherwise. With a single seed there is no spread: the sign decides, and the table says so."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from hmsa.errors import BadInputError
from hmsa.evaluation.settings import parse_setting
from hmsa.io import read_json

Rows = list[float]
# (claim, table, difference of that table's rows: rows are the table's rows in config order)
CLAIMS: list[tuple[str, str, Callable[[Rows], float]]] = [
    ("hierarchical > avg pooling at {0.5,1,2}", "table1", lambda r: r[4] - r[1]),
    ("explicit > avg pooling at {0.5,1,2}", "table1", lambda r: r[3] - r[1]),
    ("adding 0.25 helps hierarchical more than avg pooling", "table1", lambda r: (r[5] - r[4]) - (r[2] - r[1])),
    ("MS attention gain > 0 with original coarse labels", "table2", lambda r: r[1] - r[0]),
    ("MS attention gain > 0 with auto-labels", "table2", lambda r: r[3] - r[2]),
    ("auto-label gain > 0 with avg pooling", "table2", lambda r: r[2] - r[0]),
    ("auto-label gain > 0 with MS attention", "table2", lambda r: r[3] - r[1]),
    ("MS attention + auto-labels is the best of the four", "table2", lambda r: r[3] - max(r[0], r[1], r[2])),
]
ROWS_NEEDED = {"table1": 6, "table2": 4}


def seed_runs(pipeline: dict, evaluation: str) -> list[str]:
    """The per-seed evaluation stages of one evaluation of the pipeline config (see hmsa.orchestration.pipeline)."""
    return (pipeline.get("seed_runs") or {}).get(evaluation, [evaluation])


def seed_values(results: Path, pipeline: dict, row: dict) -> list[dict]:
    """One dict per seed: mIoU (percent), per-class IoU, provenance of one table row."""
    out = []
    for stage in seed_runs(pipeline, row["evaluation"]):
        path = Path(results) / stage / "metrics.json"
        metrics = read_json(path)
        name = parse_setting(row["setting"]).name
        if name not in metrics["settings"]:
            raise BadInputError(f"{path}: no setting '{row['setting']}' (has: {', '.join(metrics['settings'])})")
        s = metrics["settings"][name]
        out.append({"miou": 100 * s["miou"], "per_class": s["per_class"], "run": metrics.get("mlflow_run_id", ""),
                    "images": metrics["images"], "split": metrics["split"], "pixels": s.get("pixels", 1)})
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def verdict(mean: float, std: float | None) -> str:
    if std is None:
        return "holds (1 seed)" if mean > 0 else "contradicted (1 seed)" if mean < 0 else "within noise (1 seed)"
    if mean > 0 and mean > std:
        return "holds"
    if mean < 0 and -mean > std:
        return "contradicted"
    return "within noise"


def claims_table(pipeline: dict, results: Path, paper: dict) -> pd.DataFrame | None:
    """One row per claim whose table the pipeline reproduces; None when it reproduces neither."""
    spec = pipeline.get("tables") or {}
    per_table: dict[str, list[list[float]]] = {}  # table -> per seed, the rows' mIoU
    for table, need in ROWS_NEEDED.items():
        rows = spec.get(table)
        if not isinstance(rows, list) or len(rows) != need:
            continue
        cells = [[v["miou"] for v in seed_values(results, pipeline, r)] for r in rows]
        seeds = min(len(c) for c in cells)
        per_table[table] = [[c[k] for c in cells] for k in range(seeds)]
    if not per_table:
        return None
    out = []
    for text, table, diff in CLAIMS:
        if table not in per_table:
            continue
        ours = [diff(r) for r in per_table[table]]
        paper_rows = [p["miou"] for p in paper[table]["rows"]]
        m, s = mean_std(ours)
        out.append({"claim": text, "table": table.replace("table", "Table "),
                    "paper Δ": round(diff(paper_rows), 2), "ours Δ (mean)": round(m, 2),
                    "ours Δ (std)": None if s is None else round(s, 2), "seeds": len(ours),
                    "verdict": verdict(m, s)})
    return pd.DataFrame(out)


def fmt(mean: float, std: float | None) -> str:
    """``12.34 ± 0.56`` (or the mean alone for one seed)."""
    return f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
