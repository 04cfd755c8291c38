"""``hmsa compare A B``: the per-class IoU of two evaluations logged to MLflow, side by side with the
difference (B - A), in percent, each column named by what the user typed (a stage or run name).

A run's per-class IoU is read from its ``iou/<class>`` metrics (one evaluation run per setting, nested
under the evaluation stage's run) or, for runs logged before that layout, from its ``per_class/<setting>
.json`` tables. Settings are accepted in the config spelling (``hierarchical:0.5,1,2:flip``) and in the
file-name spelling (``hierarchical_0.5-1-2_flip``) and are shown in the config spelling.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from hmsa.errors import BadInputError
from hmsa.evaluation.settings import METHODS, Setting, parse_setting
from hmsa.io import atomic_write_text

TABLE_DIR = "per_class"
IOU_PREFIX = "iou/"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE_SPELLING = re.compile(rf"^({'|'.join(METHODS)})_([0-9.]+(?:-[0-9.]+)*)(_flip)?$")
_NUMBER = re.compile(r"[0-9]*\.?[0-9]+")


def setting_of(text: str) -> Setting:
    """A setting in either spelling: ``hierarchical:0.5,1,2:flip`` or ``hierarchical_0.5-1-2_flip``."""
    m = _FILE_SPELLING.match(text.strip())
    if m:
        return Setting(m.group(1), tuple(sorted(float(s) for s in m.group(2).split("-"))), bool(m.group(3)))
    return parse_setting(text.strip())


def label(s: Setting) -> str:
    """The config spelling of a setting (what configs/pipeline/*.yaml and ``--setting`` use)."""
    return f"{s.method}:{','.join(f'{v:g}' for v in s.scales)}" + (":flip" if s.flip else "")


def _setting_from_run(run: Any) -> Setting | None:
    """The evaluation setting a per-setting run was logged with: its ``eval.setting`` param, else its
    ``eval.method`` / ``eval.scales`` / ``eval.flip`` params, else the ``<stage> · <setting>`` run name."""
    params, name = run.data.params, run.info.run_name or ""
    candidates = [params.get("eval.setting", "")]
    if params.get("eval.method") and params.get("eval.scales"):
        scales = sorted(float(v) for v in _NUMBER.findall(params["eval.scales"]))
        flip = str(params.get("eval.flip", "")).lower() in ("true", "1", "yes")
        candidates.append(label(Setting(params["eval.method"], tuple(scales), flip)))
    candidates.append(name.rsplit("·", 1)[-1])
    for text in filter(None, candidates):
        try:
            return setting_of(text)
        except ValueError:
            continue
    return None


def resolve_run(client: Any, ref: str, experiment: str = "") -> str:
    """A run id as is; a stage name -> the newest stage run tagged ``hmsa.stage`` = name; else the
    newest run with that run name."""
    if _RUN_ID.match(ref):
        return ref
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise BadInputError(f"--experiment {experiment!r}: no such MLflow experiment")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    quoted = ref.replace("'", "\\'")
    for flt in (f"tags.`hmsa.stage` = '{quoted}'", f"attributes.run_name = '{quoted}'"):
        runs = client.search_runs(ids, flt, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
        if runs:
            run = runs[0]
            # a per-setting child run may carry its stage's tag too: compare from the stage run
            parent = run.data.tags.get("mlflow.parentRunId")
            if parent and flt.startswith("tags."):
                p = client.get_run(parent)
                if p.data.tags.get("hmsa.stage") == ref:
                    return p.info.run_id
            return run.info.run_id
    raise BadInputError(f"{ref!r}: neither a run id nor a stage or run name with an MLflow run")


def _from_metrics(run: Any) -> dict[str, float]:
    return {k[len(IOU_PREFIX):]: float(v) for k, v in run.data.metrics.items() if k.startswith(IOU_PREFIX)}


def tables(client: Any, run_id: str) -> dict[Setting, Any]:
    """Setting -> per-class IoU (%) of a run: from its own ``iou/`` metrics, its child runs', and its
    ``per_class/*.json`` tables (the older layout), in that order of precedence."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # the client raises its own types for a missing run
        raise BadInputError(f"run {run_id}: not readable in MLflow ({str(exc).splitlines()[0]})") from exc
    out: dict[Setting, Any] = {}
    own = _from_metrics(run)
    if own and (s := _setting_from_run(run)) is not None:
        out[s] = own
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                  max_results=1000)
    for child in children:
        values, s = _from_metrics(child), _setting_from_run(child)
        if values and s is not None:
            out.setdefault(s, values)
    for f in client.list_artifacts(run_id, TABLE_DIR):
        if f.path.endswith(".json"):
            try:
                s = setting_of(Path(f.path).stem)
            except ValueError:
                continue
            out.setdefault(s, f.path)  # downloaded only if chosen
    return out


def _load(client: Any, run_id: str, source: Any) -> Any:
    import pandas as pd

    if isinstance(source, dict):
        return pd.Series(source, dtype=float)
    # MLflow draws a progress bar per download unless told not to: compare prints a table, nothing else
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, source, tmp)
        data = json.loads(Path(local).read_text())
    df = pd.DataFrame(data["data"], columns=data["columns"])
    return pd.Series(pd.to_numeric(df["iou"], errors="coerce").to_numpy() * 100, index=df["class"])


def _pick(name: str, available: dict[Setting, Any], wanted: str | None) -> Setting:
    have = ", ".join(label(s) for s in available) or "none"
    if wanted:
        s = setting_of(wanted)
        if s not in available:
            raise BadInputError(f"{name}: no per-class IoU for setting {label(s)!r} (has: {have})")
        return s
    if len(available) != 1:
        raise BadInputError(f"{name}: {len(available)} evaluation settings ({have}); choose one with --setting")
    return next(iter(available))


def table(client: Any, run_a: str, run_b: str, settings: list[str] | None = None,
          names: tuple[str, str] | None = None) -> Any:
    """Columns: class, A, B, Δ (B - A), IoU in percent; a last row with the mean over classes. ``names``
    label the columns (default: the run ids); equal names get their setting appended."""
    import pandas as pd

    settings = list(settings or [])
    if len(settings) > 2:
        raise BadInputError("--setting: give it once (both runs) or twice (A, then B)")
    name_a, name_b = names or (run_a, run_b)
    sa = _pick(name_a, avail_a := tables(client, run_a), settings[0] if settings else None)
    sb = _pick(name_b, avail_b := tables(client, run_b), settings[-1] if settings else None)
    a, b = _load(client, run_a, avail_a[sa]), _load(client, run_b, avail_b[sb])
    if set(a.index) != set(b.index):
        raise BadInputError(f"{name_a} and {name_b} have different classes: not the same dataset")
    b = b.reindex(a.index)
    col_a, col_b = name_a, name_b
    if col_a == col_b:
        col_a, col_b = f"{name_a} ({label(sa)})", f"{name_b} ({label(sb)})"
    if col_a == col_b:
        col_a, col_b = f"A: {col_a}", f"B: {col_b}"
    df = pd.DataFrame({"class": list(a.index), col_a: a.to_numpy(), col_b: b.to_numpy()})
    df["Δ"] = df[col_b] - df[col_a]
    mean = {"class": "mean", col_a: a.mean(), col_b: b.mean()}
    mean["Δ"] = mean[col_b] - mean[col_a]
    out = pd.concat([df, pd.DataFrame([mean])], ignore_index=True).round(2)
    out.attrs["settings"] = (label(sa), label(sb))
    return out


def _display_name(client: Any, ref: str, run_id: str) -> str:
    """What the user typed, or for a run id the run's stage tag / run name."""
    if ref != run_id:
        return ref
    run = client.get_run(run_id)
    return run.data.tags.get("hmsa.stage") or run.info.run_name or run_id[:8]


def compare(ref_a: str, ref_b: str, out: Path | None = None, settings: list[str] | None = None,
            experiment: str = "") -> str:
    """Print-ready Markdown of the two runs' per-class IoU; also a CSV when ``out`` is given."""
    from hmsa.tracking import mlflow_client

    client = mlflow_client()
    run_a, run_b = resolve_run(client, ref_a, experiment), resolve_run(client, ref_b, experiment)
    names = (_display_name(client, ref_a, run_a), _display_name(client, ref_b, run_b))
    df = table(client, run_a, run_b, settings, names)
    if out is not None:
        atomic_write_text(Path(out), df.to_csv(index=False))
    body = df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=".2f", missingval="—")
    set_a, set_b = df.attrs["settings"]
    cols = list(df.columns)
    note = f"IoU in %; Δ = {cols[2]} - {cols[1]}; 'mean' averages the classes each run has an IoU for."
    return f"{cols[1]}: run {run_a}, {set_a}\n{cols[2]}: run {run_b}, {set_b}\n{note}\n\n{body}"
