"""Tables 1-4 of the paper rebuilt from the evaluations' metrics files, each reproduced cell beside
the paper's number, the difference, and the MLflow run behind it."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hmsa.evaluation.evaluate import parse_setting
from hmsa.io import atomic_write_text, read_json


def paper_tables() -> dict[str, Any]:
    """The paper's numbers (transcribed from the paper; null = lost in the text copy)."""
    text = importlib.resources.files("hmsa.resources").joinpath("paper_tables.yaml").read_text()
    return yaml.safe_load(text)


def _cell(results: Path, row: dict[str, str]) -> dict[str, Any]:
    """mIoU (percent), per-class IoU and provenance of one evaluation setting."""
    path = results / row["evaluation"] / "metrics.json"
    metrics = read_json(path)
    name = parse_setting(row["setting"]).name
    if name not in metrics["settings"]:
        raise ValueError(f"{path}: no setting '{row['setting']}' (has: {', '.join(metrics['settings'])})")
    s = metrics["settings"][name]
    return {"miou": 100 * s["miou"], "per_class": s["per_class"], "run": metrics.get("mlflow_run_id", ""),
            "images": metrics["images"], "split": metrics["split"]}


def _delta(ours: float | None, paper: float | None) -> float | None:
    return None if ours is None or paper is None else round(ours - paper, 2)


def table1(spec: list[dict], results: Path, paper: dict) -> pd.DataFrame:
    rows = []
    for p, r in zip(paper["rows"], spec, strict=True):
        c = _cell(results, r)
        rows.append({"method": p["method"], "eval scales": ",".join(f"{s:g}" for s in p["eval_scales"]),
                     "paper mIoU": p["miou"], "ours mIoU": round(c["miou"], 2), "Δ": _delta(c["miou"], p["miou"]),
                     "train FLOPs (paper, rel.)": p["train_flops_relative"], "setting": r["setting"],
                     "MLflow run": c["run"]})
    return pd.DataFrame(rows)


def table2(spec: list[dict], results: Path, paper: dict) -> pd.DataFrame:
    rows = []
    base = None
    for p, r in zip(paper["rows"], spec, strict=True):
        c = _cell(results, r)
        base = c["miou"] if base is None else base
        rows.append({"MS attention": p["ms_attention"], "auto-labelling": p["auto_labelling"],
                     "paper mIoU": p["miou"], "paper gain": p["gain"], "ours mIoU": round(c["miou"], 2),
                     "ours gain": round(c["miou"] - base, 2), "Δ": _delta(c["miou"], p["miou"]),
                     "setting": r["setting"], "MLflow run": c["run"]})
    return pd.DataFrame(rows)


def table3(spec: dict, results: Path, paper: dict) -> pd.DataFrame:
    c = _cell(results, spec)
    ours_paper = paper["rows"]["ours"]
    rows = []
    for name, p in zip(paper["classes"], ours_paper, strict=True):
        # Our class names use spaces ("traffic light"); the paper table uses underscores.
        v = c["per_class"].get(name.replace("_", " "), c["per_class"].get(name))
        ours = None if v is None else round(100 * v, 2)
        rows.append({"class": name, "paper IoU": p, "ours IoU": ours, "Δ": _delta(ours, p)})
    rows.append({"class": "mIoU", "paper IoU": paper["miou"]["ours"], "ours IoU": round(c["miou"], 2),
                 "Δ": _delta(c["miou"], paper["miou"]["ours"])})
    df = pd.DataFrame(rows)
    df.attrs["run"] = c["run"]
    df.attrs["split"] = c["split"]
    return df


def table4(spec: dict, results: Path, paper: dict) -> pd.DataFrame:
    c = _cell(results, spec)
    rows = [{"method": p["method"], "paper mIoU": p["miou"], "ours mIoU": None, "Δ": None, "MLflow run": ""}
            for p in paper["rows"]]
    ours = rows[-1]
    ours.update({"ours mIoU": round(c["miou"], 2), "Δ": _delta(c["miou"], ours["paper mIoU"]),
                 "MLflow run": c["run"]})
    return pd.DataFrame(rows)


def _dataset_line(pipeline: dict) -> str:
    if pipeline["data"].get("embedded"):
        return (f"Dataset: the embedded synthetic dataset (`hmsa data synth`, seed {pipeline['data'].get('seed', 0)}),"
                " not Cityscapes / Mapillary: the reproduced numbers are not comparable to the paper's in"
                " absolute terms; compare the orderings and gains.")
    data = pipeline["data"]
    return f"Dataset: real Cityscapes ({data['cityscapes']}) and Mapillary Vistas ({data['mapillary']})."


def _markdown(title: str, caption: str, df: pd.DataFrame, pipeline: dict, notes: list[str]) -> str:
    # NaN (a cell the paper has but we do not reproduce) prints as a dash, not "nan"
    body = df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=".2f", missingval="—")
    lines = [f"# {title}", "", caption, "", _dataset_line(pipeline), f"Pipeline: `{pipeline['name']}`.", "",
             body, ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def build_report(pipeline_config: Path, results: Path, out: Path) -> list[Path]:
    """Write ``table{1..4}.{md,csv}`` and ``README.md`` into ``out``; return the paths written."""
    pipeline = yaml.safe_load(Path(pipeline_config).read_text())
    paper = paper_tables()
    spec = pipeline["tables"]
    results, out = Path(results), Path(out)
    builders = {
        "table1": (table1, paper["table1"]["notes"]),
        "table2": (table2, ["Rows 2 and 4 are the teacher and the student: trained with exactly that recipe."]),
        "table3": (table3, ["The paper's column is the Cityscapes *test* server; ours is the evaluation split "
                            "named in metrics.json (test labels are not public)."]),
        "table4": (table4, ["Ours: the Mapillary model of the pipeline, with the setting named in the config."]),
    }
    # A pipeline may reproduce only some tables (e.g. a quick test config): build those it names.
    built = {name: (fn(spec[name], results, paper[name]), notes)
             for name, (fn, notes) in builders.items() if name in spec}
    written = []
    for name, (df, notes) in built.items():
        md = out / f"{name}.md"
        atomic_write_text(md, _markdown(name.replace("table", "Table "), paper[name]["caption"], df, pipeline,
                                        notes))
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
        written += [md, out / f"{name}.csv"]
    index = out / "README.md"
    atomic_write_text(index, _index(pipeline, results))
    written.append(index)
    return written


def _index(pipeline: dict, results: Path) -> str:
    lines = ["# Reports", "", f"Generated by `hmsa report` from `{results}/` (pipeline `{pipeline['name']}`).", "",
             "| file | what it shows |", "|---|---|",
             "| table1.md / .csv | Table 1: fusion methods on Mapillary val (DeepLabV3+), paper vs ours |",
             "| table2.md / .csv | Table 2: MS attention × auto-labelling ablation on Cityscapes val |",
             "| table3.md / .csv | Table 3: per-class IoU of the final Cityscapes model |",
             "| table4.md / .csv | Table 4: Mapillary val mIoU |",
             "| benchmarks/ | speed and memory figures written by `benchmarks/*.py` |", "",
             "Per-scale predictions and attention maps (Figure 3) are under "
             f"`{results}/<evaluation>/maps/`; each cell's MLflow run id opens the run in `mlflow ui`.", ""]
    return "\n".join(lines)
