"""MLflow runs of an evaluation, built for the UI's compare view.

The stage's run keeps what it always had (``miou/<setting>`` fractions, one per-class table per
setting, the config); under it, one nested run per setting carries the *same* metric names in every
run -- ``miou``, ``pixel_accuracy``, ``iou/<class>``, in percent -- so that comparing any two
evaluations puts mIoU on one row, and ``metrics.miou > 0`` finds every evaluation. The setting is in
params (``eval.method``, ``eval.scales``, ``eval.flip``), the dataset and split are a dataset input, and
tag and param ``train.run_id`` link the training run of the model.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from hmsa import tracking
from hmsa.evaluation.settings import Setting
from hmsa.io import read_json

DECIMALS = 2  # percent with 2 decimals, as the report's tables print them


def metric_key(class_name: str) -> str:
    """``iou/<class>`` with the class spelled as the dataset spells it, minus what MLflow refuses in a
    metric name (anything but letters, digits, ``_ - . `` and space; a ``/`` would nest it)."""
    return "iou/" + (re.sub(r"[^\w.\- ]", "_", class_name).strip() or "_")


def percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * float(value), DECIMALS)


def training_run(model_path: Path | str) -> str:
    """The MLflow run that trained the model: its ``train.json`` beside it (what ``hmsa train`` writes
    next to ``model.pt``) names it; "" when unknown."""
    path = Path(model_path).parent / "train.json"
    try:
        return str(read_json(path).get("mlflow_run_id") or "") if path.is_file() else ""
    except (OSError, ValueError):
        return ""


def _note(stage: str, setting: Setting, metrics: dict, train_run: str, rows: str) -> str:
    model = Path(metrics["model"])
    link = f" ([training run](#/runs/{train_run}))" if train_run else ""
    table = f" It fills the paper's table rows {rows}." if rows else ""
    flip = " with horizontal flip" if setting.flip else ""
    return (f"Evaluation `{stage}`, setting `{setting.spec}`: model `{model.parent.name}/{model.name}`{link} "
            f"scored on {metrics['dataset']} `{metrics['split']}` ({metrics['images']} images), {setting.method} "
            f"fusion at scales {', '.join(f'{s:g}' for s in setting.scales)}{flip}. mIoU, pixel accuracy and "
            f"per-class IoU in percent.{table}")


def log_setting_runs(stage_run: tracking.StageTracker, metrics: dict, names: list[str],
                     dataset_root: Path | str | None, stage: str) -> dict[str, str]:
    """One nested run per setting under ``stage_run``; setting name -> its run id ("" while the server
    is unreachable: the runs are created when it answers, from the write-ahead log)."""
    if not stage_run.enabled:
        return {}
    train_run = training_run(metrics["model"])
    extra = tracking.stage_tags()
    rows = extra.get("hmsa.paper_rows", "")
    from hmsa.tracking.tags import UNVERSIONED, dataset_tag, git_tags

    version = dataset_tag(dataset_root) if dataset_root else UNVERSIONED
    children: dict[str, tracking.StageTracker] = {}
    for name, r in metrics["settings"].items():
        setting = Setting(r["method"], tuple(float(s) for s in r["scales"]), bool(r["flip"]))
        tags = {**git_tags("evaluate"), **tracking.provenance(), **extra, "hmsa.kind": "evaluation",
                "hmsa.data_version": version, "hmsa.eval_stage": stage, "hmsa.setting": setting.spec,
                "hmsa.model": str(metrics["model"]),
                tracking.NOTE: _note(stage, setting, metrics, train_run, rows)}
        if train_run:
            tags["hmsa.train_run_id"] = train_run
        child = stage_run.child(name, f"{stage} · {setting.spec}", tags)
        child.log_params({"eval.method": setting.method, "eval.scales": ",".join(f"{s:g}" for s in setting.scales),
                          "eval.flip": str(setting.flip).lower(), "eval.setting": setting.spec,
                          "eval.dataset": metrics["dataset"], "eval.split": metrics["split"],
                          "eval.images": metrics["images"], "eval.model": metrics["model"],
                          "train.run_id": train_run or "unknown"})
        if dataset_root:
            child.log_input(f"{metrics['dataset']}-{metrics['split']}", version, str(Path(dataset_root).resolve()),
                            "evaluation", {"dataset": metrics["dataset"], "split": metrics["split"],
                                           "images": metrics["images"], "dvc_version": version})
        values = {"miou": percent(r["miou"]), "pixel_accuracy": percent(r["pixel_accuracy"]),
                  "images": float(metrics["images"])}
        values.update({metric_key(c): percent(r["per_class"][c]) for c in names})
        child.log_metrics({k: v for k, v in values.items() if v is not None})  # None: class absent, no IoU
        child.log_table({"class": names, "iou": [percent(r["per_class"][c]) for c in names]}, "per_class.json")
        child.finish()
        children[name] = child
    # One wait for all of them (close() would wait per run while the server is down).
    deadline = time.monotonic() + float(os.environ.get("HMSA_TRACKING_FINISH_WAIT_SECONDS", 30))
    for child in children.values():
        child.flush(wait=max(0.0, deadline - time.monotonic()))
    return {name: child.run_id or "" for name, child in children.items()}


def stage_name(out_dir: Path) -> str:
    """The stage's name (``hmsa submit`` hands it over), else the output folder's (``results/<stage>``)."""
    return os.environ.get(tracking.ENV_STAGE) or Path(out_dir).resolve().name


def log_evaluation(metrics: dict, names: list[str], out_dir: Path, dataset_root: Path | str | None) -> None:
    """The stage run as before (per-setting metrics and tables, params) and one nested run per setting.
    Adds ``mlflow_run_id`` (the stage run) and, per setting, its nested run's id to ``metrics``."""
    stage = stage_name(out_dir)
    tracker = tracking.StageTracker.from_env(run_name=f"evaluate · {stage}")
    for name, r in metrics["settings"].items():
        tracker.log_metrics({f"miou/{name}": r["miou"], f"pixel_accuracy/{name}": r["pixel_accuracy"]})
        tracker.log_table({"class": names, "iou": [r["per_class"][n] for n in names]},
                          artifact_file=f"per_class/{name}.json")
    tracker.log_params({"eval.dataset": metrics["dataset"], "eval.split": metrics["split"],
                        "eval.model": metrics["model"], "eval.images": metrics["images"],
                        "eval.settings": ",".join(metrics["settings"])})
    tracker.set_tags({"hmsa.eval_images": str(metrics["images"])})
    children = log_setting_runs(tracker, metrics, names, dataset_root, stage)
    for name, run_id in children.items():
        metrics["settings"][name]["mlflow_run_id"] = run_id
    # After the nested runs: creating them needed this one, so a deferred stage run has its id by now.
    metrics["mlflow_run_id"] = tracker.resolved_id(wait=None)
    tracker.close()
