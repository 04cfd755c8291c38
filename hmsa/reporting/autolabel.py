"""The report's auto-label section (section 4, Figure 4): how good the teacher's auto-labels are beside
the original coarse labels they replace, measured against the true labels of the coarse images (the
manifests' ``quality``, which only the embedded dataset has), and how good the teacher that made them is
(its evaluations, every setting they ran, e.g. single scale and {0.5,1,2} + flip)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from hmsa.autolabel_quality import SOURCES, from_cells, quality_frame, summarize
from hmsa.evaluation.settings import parse_setting
from hmsa.io import read_json
from hmsa.reporting.claims import mean_std

TITLE = "Auto-labels"
CAPTION = "Auto-labels and the original coarse labels against the true labels of the coarse images"
_SOURCE_NAMES = {"coarse": "coarse", "autolabel": "auto"}
_METRIC_NAMES = {"labelled": "labelled px", "precision": "precision %", "recall": "recall %",
                 "mislabelled": "mislabelled %",
                 "precision_both": "precision where both label %",
                 "coverage": "coverage %"}


def column(source: str, metric: str) -> str:
    """The table's column of one source's figure, e.g. ``column("autolabel", "coverage")`` -> "auto coverage %"."""
    return f"{_SOURCE_NAMES[source]} {_METRIC_NAMES[metric]}"


def headline_metrics(df: pd.DataFrame) -> dict[str, float]:
    """The section's figures for the pipeline's parent run, from its ``all`` row: ``autolabel/<source>_coverage``
    and ``autolabel/<source>_accuracy_both`` (source ``coarse`` or ``auto``), percent."""
    overall = df.set_index("class").loc["all"]
    out = {}
    for metric, key in (("coverage", "coverage"), ("precision_both", "accuracy_both")):
        for src, short in _SOURCE_NAMES.items():
            if pd.notna(value := overall[column(src, metric)]):
                out[f"autolabel/{short}_{key}"] = float(value)
    return out


def _pooled(pipeline: dict, results: Path) -> tuple[dict[str, Any], list[str]] | None:
    """The quality of every auto-labelling stage's labels (one per seed), pooled: their joint pixel
    counts add up (every seed's teacher labels the same images), so each figure is over all of them."""
    stages = list(pipeline.get("autolabel") or {})
    total, names = None, None
    for stage in stages:
        quality = read_json(Path(results) / stage / "manifest.json").get("quality")
        if not quality:  # real data: nobody knows the truth of the coarse images
            return None
        names = quality["classes"]
        counts = from_cells(quality["joint_counts"], len(names))
        total = counts if total is None else total + counts
    if total is None or names is None:  # no auto-labelling stage
        return None
    return summarize(total, names), stages


def _teacher_lines(pipeline: dict, results: Path) -> list[str]:
    """One line per auto-labelling teacher: its mIoU in every setting of its evaluations (mean ± std over
    the per-seed teachers)."""
    autolabel = pipeline.get("autolabel") or {}
    teachers = list(dict.fromkeys(st["teacher"] for st in autolabel.values()))
    by_setting: dict[str, list[float]] = {}
    split = ""
    for name, ev in (pipeline.get("evaluate") or {}).items():
        if ev["model"] not in teachers:
            continue
        metrics = read_json(Path(results) / name / "metrics.json")
        split = f"`{metrics['split']}` split, {metrics['images']} images"
        for setting in ev["settings"]:
            s = metrics["settings"][parse_setting(setting).name]
            by_setting.setdefault(setting, []).append(100 * s["miou"])
    if not by_setting:
        return []
    parts = []
    for setting, values in by_setting.items():
        m, s = mean_std(values)
        parts.append(f"`{setting}` {m:.2f}" + ("" if s is None else f" ± {s:.2f}"))
    who = ", ".join(f"`{t}`" for t in teachers)
    return [f"The teacher ({who}, {len(next(iter(by_setting.values())))} model(s)) on the {split}: "
            + "; ".join(parts) + " mIoU."]


def autolabel_section(pipeline: dict, results: Path) -> tuple[pd.DataFrame, list[str]] | None:
    """The table (one row per class and a last row ``all``) and its notes; None without ``quality``."""
    pooled = _pooled(pipeline, results)
    if pooled is None:
        return None
    quality, stages = pooled
    frame = quality_frame(quality).reset_index()
    ratios = [c for c in frame.columns if not c.endswith(("_labelled", "true_pixels")) and c != "class"]
    frame[ratios] = (100 * frame[ratios]).round(2)

    def rename(col: str) -> str:
        for src in SOURCES:
            if col.startswith(src + "_"):
                return column(src, col[len(src) + 1:])
        return {"true_pixels": "true px"}.get(col, col)

    # recall on the pixels both label says little (both must label a pixel for it to count): left out
    frame = frame.drop(columns=[c for c in frame.columns if c.endswith("_recall_both")]).rename(columns=rename)
    src = quality["sources"]
    coarse, auto = src["coarse"], src["autolabel"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.3f} %"  # 3 decimals: 99.9993 must not print as 100

    both = quality["both"]["fraction"]
    notes = [
        f"Stages: {', '.join(f'`{s}`' for s in stages)}, pooled ({quality['pixels']} pixels: the coarse split once "
        "per stage). "
        "Truth: the generator's true labels of the coarse images.",
        f"Coverage: the auto-labels label {pct(auto['coverage'])} of the pixels, the coarse labels "
        f"{pct(coarse['coverage'])}. Pixel accuracy where each labels: auto-labels {pct(auto['accuracy'])}, "
        f"coarse {pct(coarse['accuracy'])}; on the pixels both label ({pct(both)} of all): auto-labels "
        f"{pct(auto['accuracy_both'])}, coarse {pct(coarse['accuracy_both'])}.",
        "Per class: precision = of the pixels labelled with the class (and a known truth), the share truly it; "
        "recall = of the class's true pixels, the share labelled with it (unlabelled ones are misses); "
        "mislabelled = of the class's true pixels, the share labelled as another class (a model trained on the "
        "labels learns to paint that class over: a pole labelled as the building behind it); in row "
        "`all`, precision is the pixel accuracy. The generator draws each coarse polygon inside one element and "
        "cuts it around thin things (gtCoarse's rule: one class per polygon), so its coarse labels are right "
        "wherever they label; what auto-labels can add is coverage, above all of the classes it leaves out.",
        "—: nothing to count (no pixel labelled with that class, by one source or by both); coverage is "
        "given for all classes together only.",
        *_teacher_lines(pipeline, results),
    ]
    return frame, notes
