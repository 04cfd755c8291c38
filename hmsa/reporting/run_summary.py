"""The last lines of a pipeline run (the Snakefile's ``onsuccess``): each table's headline mIoU, read from
the evaluations' metrics files (the tables' own source), and where the report and the MLflow UI are.
Never fails the run: a table whose evaluations did not run (a partial target) says so."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from hmsa.evaluation.settings import parse_setting
from hmsa.reporting.compare import label


def _miou(results: Path, evaluations: list[str], setting_name: str) -> list[float]:
    values = []
    for evaluation in evaluations:
        try:
            metrics = json.loads((results / evaluation / "metrics.json").read_text())
            values.append(100 * float(metrics["settings"][setting_name]["miou"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not run (a partial target) or unreadable: the row says "not run"
    return values


def headline(pipeline: dict[str, Any], results: Path) -> list[str]:
    """One line per table row: table, evaluation · setting, mIoU (mean ± std over seeds)."""
    lines = []
    seed_runs = pipeline.get("seed_runs") or {}
    for table, spec in (pipeline.get("tables") or {}).items():
        for i, row in enumerate(spec if isinstance(spec, list) else [spec]):
            s = parse_setting(row["setting"])
            evaluations = seed_runs.get(row["evaluation"], [row["evaluation"]])
            values = _miou(Path(results), evaluations, s.name)
            if not values:
                shown = "not run"
            elif len(values) == 1:
                shown = f"{values[0]:6.2f}"
            else:
                shown = f"{statistics.mean(values):6.2f} ± {statistics.stdev(values):.2f} ({len(values)} seeds)"
            name = f"{row['evaluation'].removeprefix('evaluate_')} · {label(s)}"
            lines.append(f"  {table if i == 0 else '':<7} {name:<48} {shown}")
    return lines


def mlflow_pointer(uri: str) -> str:
    """How to open the runs: the server's address, or the command that serves a local store."""
    if uri.startswith(("http://", "https://")):
        return f"MLflow:  {uri}"
    return f"MLflow:  mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"


def _report_entry(reports: Path) -> str:
    """The page to open first: the HTML report when one was written, else the Markdown index."""
    for name in ("index.html", "README.md"):
        if (reports / name).is_file():
            return (reports / name).as_posix()
    return f"{reports.as_posix()}/"


def summary(pipeline: dict[str, Any], results: str, reports: str) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or pipeline["tracking"]["uri"]
    if uri.startswith("sqlite:////"):  # the pipeline pins it absolute for jobs; show it as the user wrote it
        local = Path(uri[len("sqlite:///"):])
        try:
            uri = "sqlite:///" + local.relative_to(Path.cwd()).as_posix()
        except ValueError:
            pass
    return "\n".join([
        f"hmsa: pipeline '{pipeline.get('name', '?')}' done. mIoU (%) of each table row "
        f"({results}/<evaluation>/metrics.json):",
        *headline(pipeline, Path(results)),
        f"Reports: {_report_entry(Path(reports))}",
        f"{mlflow_pointer(uri)}   experiment {pipeline['tracking']['experiment']}",
    ])
