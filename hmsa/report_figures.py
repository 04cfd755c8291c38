"""The report's figures: Figure 3 (per-scale predictions and attention), Figure 4 (auto-labels beside the
original coarse labels), Figure 5 (qualitative results of the final model) and the training curves.

Each function returns the files it wrote (none when its inputs are absent, e.g. no ``save_maps``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hmsa.io import atomic_write, atomic_write_text, read_json
from hmsa.visualize import colorize, read_tiles, save_grid

log = logging.getLogger("hmsa.report")

CURVES = ("loss/total", "lr")


def figure3(pipeline: dict, results: Path, out: Path, per_eval: int = 2) -> list[Path]:
    """Copies of the first attention-map grids of every evaluation that saved some."""
    written = []
    for name in pipeline["evaluate"]:
        for src in sorted((results / name / "maps").glob("*.png"))[:per_eval]:
            dst = out / f"figure3_{name}_{src.name}"
            atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
            written.append(dst)
    return written


def figure4(pipeline: dict, results: Path, out: Path, count: int = 3) -> list[Path]:
    """Image | original coarse label | auto-label, for the first images of each auto-labelling stage."""
    from hmsa.data.labels import cityscapes_label_to_train_lut

    root = Path(pipeline["data"]["cityscapes"])
    lut = cityscapes_label_to_train_lut()
    written = []
    for stage in pipeline.get("autolabel") or {}:
        manifest_path = results / stage / "manifest.json"
        if not manifest_path.exists():
            continue
        manifest = read_json(manifest_path)
        split, labels = manifest["split"], Path(manifest["labels_dir"])
        rows = []
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
        if rows:
            path = out / f"figure4_{stage}.png"
            save_grid(path, rows)
            written.append(path)
    return written


def figure5(pipeline: dict, results: Path, out: Path, count: int = 4) -> list[Path]:
    """Image | prediction | ground truth of the final model (the Table 3 evaluation), cut out of the
    first row of its Figure 3 grids (input, ground truth, fused prediction)."""
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
        rows.append([image, pred, truth])
    if not rows:
        return []
    path = out / "figure5_qualitative.png"
    save_grid(path, rows)
    return [path]


def _histories(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in CURVES}


def training_curves(pipeline: dict, results: Path, out: Path) -> list[Path]:
    """Loss and learning rate of every training stage, from its MLflow run (``train.json`` names it);
    the plotted values also go to ``training_curves.csv``."""
    from hmsa.tracking import _client

    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    client = None
    for stage in pipeline["train"]:
        path = results / stage / "train.json"
        run_id = read_json(path).get("mlflow_run_id", "") if path.exists() else ""
        if not run_id:
            continue
        try:
            client = client or _client()
            curves[stage] = _histories(client, run_id)
        except Exception as exc:  # noqa: BLE001 - an unreachable server leaves the curves out, not the report
            log.warning("training curves: MLflow run %s of %s not readable: %s", run_id, stage, exc)
    if not any(h["loss/total"] for h in curves.values()):
        return []
    lines = ["stage,metric,step,value"]
    lines += [f"{stage},{key},{step},{value!r}" for stage, hist in curves.items() for key, pts in hist.items()
              for step, value in pts]
    csv_path = out / "training_curves.csv"
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    png = out / "training_curves.png"
    _plot_curves(curves, png)
    return [png, csv_path]


def _plot_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4))
    for ax, key in zip(axes, CURVES, strict=True):
        for stage, hist in curves.items():
            if hist[key]:
                steps, values = zip(*hist[key], strict=True)
                ax.plot(steps, values, label=stage)
        ax.set_xlabel("iteration")
        ax.set_title(key)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
