"""The report's figures: Figure 3 (per-scale predictions and attention), Figure 4 (auto-labels beside the
original coarse labels), Figure 5 (qualitative results of the final model) and the training curves.

Each function returns the files it wrote (none when its inputs are absent, e.g. no ``save_maps``).
Pictures are gathered here and drawn, titled and labelled, by ``hmsa.reporting.plots``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hmsa.io import atomic_write_text, read_json
from hmsa.reporting import plots
from hmsa.reporting.visualize import DATASET_KEY, SCALES_KEY, colorize, grid_meta, read_tiles

log = logging.getLogger("hmsa.report")

CURVES = ("loss/window_mean", "loss/total", "lr")  # read from MLflow; the first loss present is plotted
AXES = {"loss/window_mean": "training loss (all terms), mean since the previous point",
        "loss/total": "training loss (all terms), one batch", "lr": "learning rate"}


def _grid_rows(src: Path, scales: list[float]) -> list[list[np.ndarray]]:
    """The tiles of a Figure 3 grid: row 0 [image, truth, fused], then [prediction, attention] per scale
    (white padding tiles dropped)."""
    rows = [read_tiles(src, 0)[:3]]
    rows += [read_tiles(src, k + 1)[:2] for k in range(len(scales))]
    return rows


def _figure3_source(src: Path, dataset: str) -> tuple[list[float], str, str]:
    """(scales, dataset, method) of a grid: from its PNG text chunks, else (grids of older runs) from the
    file name ``<index>_<method>_<s1-s2-...>[_flip].png``."""
    meta = grid_meta(src)
    method, _, rest = src.stem.split("_", 1)[1].partition("_")
    text = meta.get(SCALES_KEY) or rest.split("_")[0].replace("-", ",")
    return [float(s) for s in text.split(",")], meta.get(DATASET_KEY, dataset), method


def figure3(pipeline: dict, results: Path, out: Path, per_eval: int = 2) -> list[Path]:
    """The first attention-map grids of every evaluation that saved some, drawn with a title, the scale
    of each row, a class legend and the attention's colour bar."""
    written = []
    for name, ev in pipeline["evaluate"].items():
        for src in sorted((results / name / "maps").glob("*.png"))[:per_eval]:
            dst = out / f"figure3_{name}_{src.name}"
            try:
                scales, dataset, method = _figure3_source(src, ev.get("dataset", "cityscapes"))
                rows = _grid_rows(src, scales)
            except (ValueError, IndexError) as exc:
                log.warning("figure 3: %s not drawn: %s", src, exc)
                continue
            title = (f"Figure 3: {name}, image {src.stem.split('_')[0]}: {method} fusion of scales "
                     f"{', '.join(f'{s:g}' for s in scales)} ({dataset})")
            plots.figure3(dst, rows, scales, dataset, method, title)
            written.append(dst)
    return written


def figure4(pipeline: dict, results: Path, out: Path, count: int = 3) -> list[Path]:
    """Image | original coarse label | auto-label, for the first images of each auto-labelling stage."""
    from hmsa.data.labels import cityscapes_label_to_train_lut

    root = Path(pipeline["data"]["cityscapes"])
    lut = cityscapes_label_to_train_lut()
    written = []
    for stage, spec in (pipeline.get("autolabel") or {}).items():
        manifest_path = results / stage / "manifest.json"
        if not manifest_path.exists():
            continue
        manifest = read_json(manifest_path)
        split, labels = manifest["split"], Path(manifest["labels_dir"])
        rows, names = [], []
        for name in sorted(manifest["per_image"])[:count]:
            image = root / "leftImg8bit" / split / f"{name}_leftImg8bit.png"
            coarse = root / "gtCoarse" / split / f"{name}_gtCoarse_labelIds.png"
            auto = labels / split / f"{name}_gtCoarse_labelIds.png"
            missing = [p for p in (image, coarse, auto) if not p.exists()]
            if missing:
                log.warning("figure 4: %s not found, image %s left out", missing[0], name)
                continue
            rows.append([np.asarray(Image.open(image).convert("RGB")),
                         colorize(lut[np.asarray(Image.open(coarse))], "cityscapes"),
                         colorize(np.asarray(Image.open(auto)), "cityscapes")])
            names.append(Path(name).name)
        if rows:
            path = out / f"figure4_{stage}.png"
            threshold = manifest.get("threshold")
            how = f"max probability ≥ {threshold:g}, else ignore" if isinstance(threshold, int | float) else "hard"
            plots.panel_grid(path, rows, ["image", "original coarse label", f"auto-label ({how})"], names,
                             f"Figure 4: auto-labels of {stage} (teacher {spec.get('teacher', '?')}) "
                             f"on the {split} split", "cityscapes", (1, 2))
            written.append(path)
    return written


def figure5_rows(pipeline: dict, results: Path, count: int = 4) -> list[tuple[str, list[np.ndarray]]]:
    """(image name, [image, prediction, ground truth]) of the final model (the Table 3 evaluation), cut
    out of the first row of its Figure 3 grids (input, ground truth, fused prediction)."""
    spec = (pipeline.get("tables") or {}).get("table3")
    if not spec:
        return []
    rows = []
    for src in sorted((results / spec["evaluation"] / "maps").glob("*.png"))[:count]:
        try:
            image, truth, pred = read_tiles(src, 0)[:3]
        except ValueError as exc:
            log.warning("figure 5: %s", exc)
            continue
        rows.append((src.stem.split("_")[0], [image, pred, truth]))
    return rows


def figure5(pipeline: dict, results: Path, out: Path, count: int = 4) -> list[Path]:
    """Image | prediction | ground truth of the final model, with column headers and a class legend."""
    rows = figure5_rows(pipeline, results, count)
    if not rows:
        return []
    evaluation = pipeline["tables"]["table3"]["evaluation"]
    ev = pipeline["evaluate"].get(evaluation, {})
    dataset = ev.get("dataset", "cityscapes")
    metrics = results / evaluation / "metrics.json"  # the split it was scored on, as recorded
    split = read_json(metrics).get("split", "?") if metrics.exists() else ev.get("split", "val")
    path = out / "figure5_qualitative.png"
    plots.panel_grid(path, [r for _, r in rows], ["image", "prediction", "ground truth"],
                     [f"image {n}" for n, _ in rows],
                     f"Figure 5: the final model ({ev.get('model', evaluation)}) on the "
                     f"{split} split", dataset, (1, 2))
    return [path]


def _histories(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in CURVES}


def training_curves(pipeline: dict, results: Path, out: Path) -> list[Path]:
    """Loss and learning rate of every training stage, from its MLflow run (``train.json`` names it);
    the plotted values also go to ``training_curves.csv``."""
    from hmsa.tracking import mlflow_client

    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    client = None
    for stage in pipeline["train"]:
        path = results / stage / "train.json"
        run_id = read_json(path).get("mlflow_run_id", "") if path.exists() else ""
        if not run_id:
            continue
        try:
            client = client or mlflow_client()
            curves[stage] = _histories(client, run_id)
        except Exception as exc:  # noqa: BLE001 - an unreachable server leaves the curves out, not the report
            log.warning("training curves: MLflow run %s of %s not readable: %s", run_id, stage, exc)
    # runs logged before loss/window_mean existed have only the last batch's loss
    loss = next((k for k in CURVES[:2] if any(h[k] for h in curves.values())), None)
    if loss is None:
        return []
    lines = ["stage,metric,step,value"]
    lines += [f"{stage},{key},{step},{value!r}" for stage, hist in curves.items() for key, pts in hist.items()
              for step, value in pts]
    csv_path = out / "training_curves.csv"
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    png = out / "training_curves.png"
    plots.curves(curves, png, ((loss, AXES[loss]), ("lr", AXES["lr"])))
    return [png, csv_path]
