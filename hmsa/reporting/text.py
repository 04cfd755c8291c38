"""The words around the report's tables: a title per the data actually used, the split and image count
of every table, what each "—" means, and the provenance of every cell (MLflow run, git commit, the
dataset's DVC version, the model file's, the job)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from hmsa.io import read_json
from hmsa.reporting.claims import seed_runs

log = logging.getLogger("hmsa.report")
UNVERSIONED = "unversioned"

# What a dash means, per table and column (a column not listed: "not available").
DASHES = {
    "ours std": "one seed, no spread (list more in the pipeline config's `seeds:`)",
    "gain std": "one seed, no spread",
    "ours Δ (std)": "one seed, no spread",
    "ours IoU": "the class occurs neither in the ground truth nor in the predictions of our split: its IoU is "
                "undefined and left out of our mean",
    "ours mIoU": "a method the paper compares with; not reproduced here",
    "Δ vs paper": "no number of ours to compare",
}


def evaluations(spec: dict | list) -> list[dict]:
    return spec if isinstance(spec, list) else [spec]


def scored_on(results: Path, pipeline: dict, spec: dict | list) -> list[tuple[str, str, int]]:
    """Distinct (dataset, split, images) of the evaluations behind a table, in row order."""
    seen: dict[tuple[str, str, int], None] = {}
    for row in evaluations(spec):
        dataset = (pipeline.get("evaluate") or {}).get(row["evaluation"], {}).get("dataset", "?")
        for stage in seed_runs(pipeline, row["evaluation"]):
            m = read_json(Path(results) / stage / "metrics.json")
            seen[(m.get("dataset", dataset), m["split"], int(m["images"]))] = None
    return list(seen)


def _data_name(pipeline: dict, dataset: str) -> str:
    real = {"cityscapes": "Cityscapes", "mapillary": "Mapillary Vistas"}.get(dataset, dataset)
    return f"the embedded synthetic {real}-format dataset" if pipeline["data"].get("embedded") else real


def split_line(pipeline: dict, scored: list[tuple[str, str, int]]) -> str:
    """``Ours scored on the `val` split, 2 images (...)`` for each evaluation set of the table."""
    parts = [f"the `{split}` split, {images} images ({_data_name(pipeline, ds)})" for ds, split, images in scored]
    return "Ours scored on " + "; ".join(parts) + "."


def table3_title(pipeline: dict, scored: list[tuple[str, str, int]], withheld: bool) -> str:
    """Table 3's title says what ours was scored on: the paper's is the Cityscapes test server."""
    ds, split, images = scored[0]
    if withheld:
        where = f"Cityscapes `{split}` set (labels withheld: predictions for the benchmark server)"
    elif pipeline["data"].get("embedded"):
        where = f"the embedded dataset's labelled `{split}` split ({images} images)"
    else:
        where = f"{_data_name(pipeline, ds)} `{split}` split ({images} images)"
    return f"Table 3: per-class IoU, ours on {where}"


def dash_notes(df: pd.DataFrame) -> list[str]:
    """One note per column that has a "—", saying why."""
    cols = [c for c in df.columns if df[c].isna().any()]
    return [f"— in *{c}*: {DASHES.get(c, 'not available')}." for c in cols]


def table3_notes(df: pd.DataFrame) -> list[str]:
    n, present = df.attrs.get("classes", 19), df.attrs.get("present", 0)
    notes = [f"The paper's mIoU averages its {n} classes (Cityscapes test server)."]
    if present < n and not df.attrs.get("withheld"):
        notes.append(f"Only {present} of the {n} classes occur in our split, so our mIoU over all {n} is undefined; "
                     f"the row over the {present} classes present compares like with like: the paper's mean IoU "
                     "of those same classes beside ours.")
    if df.attrs.get("withheld"):
        notes.append("The labels of this split are withheld (the real Cityscapes test set): the predictions "
                     "saved by the evaluation are for the benchmark server, so ours is blank here.")
    return notes


def dataset_versions(pipeline: dict, datasets: list[str]) -> list[str]:
    """The DVC version of each dataset root the table used (``hmsa.orchestration.versioning.dataset_version``, called
    defensively: "unversioned" when it is missing, finds no record, or the files changed since)."""
    try:
        from hmsa.orchestration import versioning

        version_of = getattr(versioning, "dataset_version", None)
    except ImportError:
        version_of = None
    out = []
    for ds in datasets:
        root = pipeline["data"].get(ds, "")
        version = None
        if version_of is not None and root:
            try:
                version = version_of(Path(root))
            except Exception as exc:  # noqa: BLE001 - the tables stand without it
                log.warning("no DVC version for dataset %s: %s", root, exc)
        out.append(f"dataset {ds} (`{root}`): DVC `{version or UNVERSIONED}`")
    return out


def _run_line(run: str, t: dict[str, str]) -> str:
    """Runs tagged before the fix held the model file's hash in ``hmsa.data_version``; newer runs hold
    the dataset's there and the model's in ``hmsa.input_versions``."""
    new_style = "hmsa.input_versions" in t or "mlflow.source.git.commit" in t
    data = (t.get("hmsa.data_version") or UNVERSIONED) if new_style else "not recorded by this run"
    model = t.get("hmsa.input_versions") if new_style else t.get("hmsa.data_version")
    job = (f"SLURM job `{t['hmsa.slurm_job_id']}`" if t.get("hmsa.slurm_job_id") and "hmsa.local_job_id" not in t
           else f"local job `{t['hmsa.local_job_id']}`" if t.get("hmsa.local_job_id") else "job `-`")
    return (f"- `{run}`: stage `{t.get('hmsa.stage', '?')}`, git `{t.get('hmsa.git_commit', '?')}`, "
            f"dataset `{data}`, model file (DVC md5) `{model or '-'}`, {job}")


def provenance(runs: list[str], pipeline: dict, datasets: list[str]) -> list[str]:
    """The provenance block of one table: the datasets' DVC versions, then one line per MLflow run."""
    lines = ["", "Provenance:", ""] + [f"- {v}" for v in dataset_versions(pipeline, datasets)]
    runs = [r for r in dict.fromkeys(runs) if r]
    if not runs or os.environ.get("HMSA_TRACKING", "1") == "0":
        return lines
    from hmsa.tracking import mlflow_client

    try:
        client = mlflow_client()
        tags: list[tuple[str, Any]] = [(run, client.get_run(run).data.tags) for run in runs]
    except Exception as exc:  # noqa: BLE001 - the tables stand without it
        log.warning("provenance of the runs left out, MLflow not readable: %s", exc)
        return lines
    return lines + ["", "MLflow runs (their tags):", ""] + [_run_line(r, t) for r, t in tags]
