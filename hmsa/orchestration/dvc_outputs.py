"""What DVC reads (dvc.yaml's top-level ``metrics`` and ``plots``), kept apart from the evaluation's own
files so that ``dvc metrics show`` / ``diff`` print one readable column per setting:

* ``<results>/<evaluation>/dvc_metrics.json``: ``{"<setting>": {"miou": 71.23}}``, mIoU in percent and
  nothing else (no run ids, paths or hashes: DVC shows every key of a metrics file as a column);
* ``<results>/per_class/<table>.csv``: ``class,row,iou`` (percent), the per-class IoU of every row of one
  paper table, drawn by workflows/dvc/per_class_iou.json as one class x row heatmap per table (a bar
  chart per evaluation made 19 plots, Mapillary's with 66 overlapping labels).

Settings are spelled as in the pipeline configs (``hierarchical:0.5,1,2:flip``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from hmsa.errors import BadInputError
from hmsa.evaluation.settings import Setting, parse_setting
from hmsa.io import atomic_write_json, atomic_write_text
from hmsa.reporting.compare import label

DVC_METRICS = "dvc_metrics.json"
PLOTS_DIR = "per_class"


def _percent(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(100 * float(value), 2)


def dvc_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"<setting>": {"miou": <percent>}}`` from an evaluation's metrics (``run_evaluation``'s result)."""
    out = {}
    for r in metrics["settings"].values():
        miou = _percent(r.get("miou"))
        if miou is not None:
            out[label(Setting(r["method"], tuple(sorted(float(s) for s in r["scales"])), bool(r["flip"])))] = {
                "miou": miou}
    return out


def write_dvc_metrics(path: Path, metrics: dict[str, Any]) -> None:
    atomic_write_json(Path(path), dvc_metrics(metrics))


def _row_name(evaluation: str, setting: Setting) -> str:
    return f"{evaluation.removeprefix('evaluate_')} · {label(setting)}"


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (run its evaluation first)") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def per_class_rows(pipeline: dict[str, Any], results: Path, table: str) -> list[dict[str, Any]]:
    """``{"class", "row", "iou"}`` for every class of every row of ``table``; a row's IoU is the mean over
    its seeds' evaluations (``seed_runs`` of a seed-expanded config), None where no seed has one."""
    spec = pipeline["tables"][table]
    rows = []
    for row in spec if isinstance(spec, list) else [spec]:
        setting = parse_setting(row["setting"])
        per_seed = []
        for evaluation in pipeline["seed_runs"].get(row["evaluation"], [row["evaluation"]]):
            path = Path(results) / evaluation / "metrics.json"
            settings = _read_metrics(path)["settings"]
            if setting.name not in settings:
                raise BadInputError(f"{path}: no setting {label(setting)!r} (has: {', '.join(settings)})")
            per_seed.append(settings[setting.name]["per_class"])
        name = _row_name(row["evaluation"], setting)
        for cls in per_seed[0]:
            values = [p.get(cls) for p in per_seed if p.get(cls) is not None]
            rows.append({"class": cls, "row": name,
                         "iou": _percent(sum(values) / len(values)) if values else None})
    return rows


def write_per_class_plots(pipeline_config: Path, results: Path, out_dir: Path) -> list[Path]:
    """One ``<out_dir>/<table>.csv`` per table of the pipeline config; returns the paths written."""
    from hmsa.orchestration.pipeline import expand_seeds

    try:
        pipeline = expand_seeds(yaml.safe_load(Path(pipeline_config).read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{pipeline_config}: not found") from None
    written = []
    for table in pipeline.get("tables") or {}:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["class", "row", "iou"], lineterminator="\n")
        writer.writeheader()
        for r in per_class_rows(pipeline, Path(results), table):
            writer.writerow({**r, "iou": "" if r["iou"] is None else f"{r['iou']:.2f}"})
        path = Path(out_dir) / f"{table}.csv"
        atomic_write_text(path, buf.getvalue())
        written.append(path)
    return written
