"""``hmsa compare RUN_A RUN_B``: the per-class IoU tables two evaluation runs logged to MLflow, side by
side with the difference (B - A), in percent."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from hmsa.io import atomic_write_text

TABLE_DIR = "per_class"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_run(client: Any, ref: str, experiment: str = "") -> str:
    """A run id as is; a stage name -> the newest run tagged ``hmsa.stage`` = name."""
    if _RUN_ID.match(ref):
        return ref
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"--experiment {experiment!r}: no such MLflow experiment")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`hmsa.stage` = '{ref}'", order_by=["attributes.start_time DESC"],
                              max_results=1) if ids else []
    if not runs:
        raise ValueError(f"{ref!r}: neither a run id nor a stage with an MLflow run")
    return runs[0].info.run_id


def tables(client: Any, run_id: str) -> dict[str, str]:
    """setting name -> artifact path of each per-class table of a run."""
    try:
        files = client.list_artifacts(run_id, TABLE_DIR)
    except Exception as exc:  # the client raises its own types for a missing run
        raise ValueError(f"run {run_id}: not readable in MLflow ({str(exc).splitlines()[0]})") from exc
    return {Path(f.path).stem: f.path for f in files if f.path.endswith(".json")}


def _load(client: Any, run_id: str, path: str) -> pd.Series:
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, path, tmp)
        data = json.loads(Path(local).read_text())
    df = pd.DataFrame(data["data"], columns=data["columns"])
    return pd.Series(pd.to_numeric(df["iou"], errors="coerce").to_numpy() * 100, index=df["class"])


def _pick(run: str, available: dict[str, str], wanted: str | None) -> str:
    if wanted:
        if wanted not in available:
            raise ValueError(f"run {run}: no per-class table for setting {wanted!r} "
                             f"(has: {', '.join(available) or 'none'})")
        return wanted
    if len(available) != 1:
        raise ValueError(f"run {run}: {len(available)} per-class tables ({', '.join(available) or 'none'}); "
                         "choose one with --setting")
    return next(iter(available))


def table(client: Any, run_a: str, run_b: str, settings: list[str] | None = None) -> pd.DataFrame:
    """Columns: class, A, B, Δ (B - A), IoU in percent; a last row with the mean over classes."""
    settings = list(settings or [])
    if len(settings) > 2:
        raise ValueError("--setting: give it once (both runs) or twice (run A, then run B)")
    want_a = settings[0] if settings else None
    want_b = settings[-1] if settings else None
    sa = _pick(run_a, tables(client, run_a), want_a)
    sb = _pick(run_b, tables(client, run_b), want_b)
    a = _load(client, run_a, f"{TABLE_DIR}/{sa}.json")
    b = _load(client, run_b, f"{TABLE_DIR}/{sb}.json")
    if list(a.index) != list(b.index):
        raise ValueError(f"runs {run_a} and {run_b} have different classes: not the same dataset")
    col_a, col_b = f"A {sa} ({run_a[:8]})", f"B {sb} ({run_b[:8]})"
    df = pd.DataFrame({"class": a.index, col_a: a.to_numpy(), col_b: b.to_numpy()})
    df["Δ"] = df[col_b] - df[col_a]
    mean = {"class": "mean", col_a: a.mean(), col_b: b.mean()}
    mean["Δ"] = mean[col_b] - mean[col_a]
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True).round(2)


def compare(ref_a: str, ref_b: str, out: Path | None = None, settings: list[str] | None = None,
            experiment: str = "") -> str:
    """Print-ready Markdown of the two runs' per-class IoU; also a CSV when ``out`` is given."""
    from hmsa.tracking import _client

    client = _client()
    run_a, run_b = resolve_run(client, ref_a, experiment), resolve_run(client, ref_b, experiment)
    df = table(client, run_a, run_b, settings)
    if out is not None:
        atomic_write_text(Path(out), df.to_csv(index=False))
    body = df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=".2f", missingval="—")
    note = "IoU in %; Δ = B - A; 'mean' averages the classes each run has an IoU for."
    return f"A = {run_a}\nB = {run_b}\n{note}\n\n{body}"
