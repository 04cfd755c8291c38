"""Tables 1-4 of the paper rebuilt from the evaluations' metrics files, each reproduced cell beside
the paper's number, the difference, and the MLflow run behind it (Markdown, CSV, LaTeX); the figures
(``hmsa.report_figures``); an index; all of it also logged to the pipeline's MLflow parent run."""

from __future__ import annotations

import importlib.resources
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hmsa.claims import claims_table, mean_std, seed_values
from hmsa.io import atomic_write_text
from hmsa.pipeline import expand_seeds

log = logging.getLogger("hmsa.report")
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def paper_tables() -> dict[str, Any]:
    """The paper's numbers (transcribed from the paper; null = lost in the text copy)."""
    text = importlib.resources.files("hmsa.resources").joinpath("paper_tables.yaml").read_text()
    return yaml.safe_load(text)


def _cell(results: Path, row: dict[str, str], pipeline: dict | None = None) -> dict[str, Any]:
    """mIoU (percent), per-class IoU and provenance of one evaluation setting (the first seed's)."""
    return seed_values(results, pipeline or {}, row)[0]


def _delta(ours: float | None, paper: float | None) -> float | None:
    return None if ours is None or paper is None else round(ours - paper, 2)


def _seeded(spec: list[dict], results: Path, pipeline: dict) -> tuple[list[list[dict]], list[list[float]]]:
    """Per row: the per-seed cells, and per row the per-seed gain over row 0 (paired by seed)."""
    cells = [seed_values(results, pipeline, r) for r in spec]
    base = cells[0]
    gains = [[c["miou"] - b["miou"] for c, b in zip(row, base, strict=False)] for row in cells]
    return cells, gains


def _ours(cells: list[dict], gains: list[float]) -> dict[str, Any]:
    """The "ours" columns of one row: mean and spread over seeds, the gain over the table's baseline."""
    m, s = mean_std([c["miou"] for c in cells])
    g, gs = mean_std(gains)
    return {"ours mIoU": round(m, 2), "ours std": None if s is None else round(s, 2),
            "ours gain": round(g, 2), "gain std": None if gs is None else round(gs, 2), "seeds": len(cells),
            "MLflow run": " ".join(c["run"] for c in cells)}


def table1(spec: list[dict], results: Path, paper: dict, pipeline: dict | None = None) -> pd.DataFrame:
    cells, gains = _seeded(spec, results, pipeline or {})
    base = paper["rows"][0]["miou"]
    rows = []
    for p, r, c, g in zip(paper["rows"], spec, cells, gains, strict=True):
        rows.append({"method": p["method"], "eval scales": ",".join(f"{s:g}" for s in p["eval_scales"]),
                     "paper mIoU": p["miou"], "paper gain": round(p["miou"] - base, 2), **_ours(c, g),
                     "train FLOPs (paper, rel.)": p["train_flops_relative"], "setting": r["setting"]})
    return pd.DataFrame(rows)


def table2(spec: list[dict], results: Path, paper: dict, pipeline: dict | None = None) -> pd.DataFrame:
    cells, gains = _seeded(spec, results, pipeline or {})
    rows = []
    for p, r, c, g in zip(paper["rows"], spec, cells, gains, strict=True):
        rows.append({"MS attention": p["ms_attention"], "auto-labelling": p["auto_labelling"],
                     "paper mIoU": p["miou"], "paper gain": p["gain"], **_ours(c, g), "setting": r["setting"]})
    return pd.DataFrame(rows)


def table3(spec: dict, results: Path, paper: dict, pipeline: dict | None = None) -> pd.DataFrame:
    c = _cell(results, spec, pipeline)
    ours_paper = paper["rows"]["ours"]
    withheld = c["pixels"] == 0  # e.g. the real Cityscapes test split: its labels are not public
    rows = []
    for name, p in zip(paper["classes"], ours_paper, strict=True):
        # Our class names use spaces ("traffic light"); the paper table uses underscores.
        v = c["per_class"].get(name.replace("_", " "), c["per_class"].get(name))
        ours = None if v is None or withheld else round(100 * v, 2)
        rows.append({"class": name, "paper IoU": p, "ours IoU": ours, "Δ": _delta(ours, p)})
    miou = None if withheld else round(c["miou"], 2)
    rows.append({"class": "mIoU", "paper IoU": paper["miou"]["ours"], "ours IoU": miou,
                 "Δ": _delta(miou, paper["miou"]["ours"])})
    df = pd.DataFrame(rows)
    df.attrs.update(run=c["run"], split=c["split"], images=c["images"], withheld=withheld)
    return df


def table4(spec: dict, results: Path, paper: dict, pipeline: dict | None = None) -> pd.DataFrame:
    c = _cell(results, spec, pipeline)
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


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex(name: str, caption: str, df: pd.DataFrame) -> str:
    """A booktabs table; the Δ column header as math so that plain pdflatex builds it."""
    body = df.astype(object).where(df.notna(), None).rename(columns={"Δ": "HMSADELTA"})
    tex = body.to_latex(index=False, escape=True, na_rep="--", float_format="%.2f", caption=_tex_escape(caption),
                        label=f"tab:{name}")
    return tex.replace("HMSADELTA", r"$\Delta$")


def _provenance(df: pd.DataFrame) -> list[str]:
    """One line per MLflow run behind a table: stage, git commit, data version, SLURM job (from its tags)."""
    runs = [r for r in dict.fromkeys(df.attrs.get("runs", [])) if r]
    if not runs or os.environ.get("HMSA_TRACKING", "1") == "0":
        return []
    from hmsa.tracking import _client

    lines = ["", "Provenance (MLflow tags of each run):", ""]
    try:
        client = _client()
        for run in runs:
            t = client.get_run(run).data.tags
            lines.append(f"- `{run}`: stage `{t.get('hmsa.stage', '?')}`, git `{t.get('hmsa.git_commit', '?')}`, "
                         f"data `{t.get('hmsa.data_version') or '-'}`, job `{t.get('hmsa.slurm_job_id') or '-'}`")
    except Exception as exc:  # noqa: BLE001 - the tables stand without it
        log.warning("provenance lines left out, MLflow not readable: %s", exc)
        return []
    return lines


def _split_notes(name: str, df: pd.DataFrame) -> list[str]:
    """Table 3 says which split and how many images its "ours" column was scored on."""
    if name != "table3":
        return []
    notes = [f"Ours scored on the `{df.attrs['split']}` split, {df.attrs['images']} images; the paper's row is "
             "the Cityscapes test server (19 classes)."]
    if df.attrs.get("withheld"):
        notes.append("The labels of this split are withheld (the real Cityscapes test set): the predictions "
                     "saved by the evaluation are for the benchmark server, so ours is blank here.")
    return notes


def _tables(pipeline: dict, results: Path, out: Path, paper: dict) -> list[Path]:
    spec = pipeline["tables"]
    builders = {
        "table1": (table1, paper["table1"]["notes"]),
        "table2": (table2, ["All four rows train on the train split (fine + a coarse pool) with one schedule; "
                            "they differ only in the attention and in which coarse labels they use. Row 2 is "
                            "the teacher that made the auto-labels."]),
        "table3": (table3, ["Ours: the student of section 5.1.1 (train+val fine + auto-labelled coarse), the "
                            "paper's test-set recipe; it is never scored on val, which it trained on."]),
        "table4": (table4, ["Ours: HRNet-OCR with hierarchical attention trained on Mapillary (initialised from "
                            "the attention-free pre-training), with the setting named in the config."]),
    }
    # A pipeline may reproduce only some tables (e.g. a quick test config): build those it names.
    built = {name: (fn(spec[name], results, paper[name], pipeline), notes)
             for name, (fn, notes) in builders.items() if name in spec}
    written = []
    for name, (df, notes) in built.items():
        rows = spec[name] if isinstance(spec[name], list) else [spec[name]]
        df.attrs["runs"] = [c["run"] for r in rows for c in seed_values(results, pipeline, r)]
        title, caption = name.replace("table", "Table "), paper[name]["caption"]
        notes = notes + _split_notes(name, df)
        md = _markdown(title, caption, df, pipeline, notes) + "\n".join(_provenance(df))
        paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.tex"]
        atomic_write_text(paths[0], md if md.endswith("\n") else md + "\n")
        atomic_write_text(paths[1], df.to_csv(index=False))
        atomic_write_text(paths[2], _latex(name, f"{title}: {caption}", df))
        written += paths
    return written + _claims(pipeline, results, out, paper) + _convergence(pipeline, results, out)


def _convergence(pipeline: dict, results: Path, out: Path) -> list[Path]:
    """``convergence.{md,csv}``: is each training stage's loss flat over the last fifth of its run?"""
    from hmsa.convergence import RULE, convergence_table

    df = convergence_table(pipeline, results)
    if df is None:
        return []
    flat = int((df["verdict"] == "flat").sum())
    notes = [RULE,
             f"{flat} of {len(df)} training stages flat. Loss: the logged per-batch training loss (all terms)."]
    md = _markdown("Convergence", "Training loss over the last fifth of each training stage", df, pipeline, notes)
    paths = [out / "convergence.md", out / "convergence.csv"]
    atomic_write_text(paths[0], md)
    atomic_write_text(paths[1], df.to_csv(index=False))
    return paths


def _claims(pipeline: dict, results: Path, out: Path, paper: dict) -> list[Path]:
    """``claims.{md,csv}``: the paper's findings, the paper's Δ, ours over seeds, a verdict."""
    df = claims_table(pipeline, results, paper)
    if df is None:
        return []
    seeds = ", ".join(str(s) for s in pipeline.get("seeds") or [0])
    notes = [f"Training seeds: {seeds}. Ours: the same difference of table cells computed per seed (all rows "
             "of a seed trained with that seed), mean and sample standard deviation over seeds.",
             "Verdict: holds = mean > 0 and larger than one standard deviation; contradicted = mean < 0 and "
             "larger than one standard deviation; within noise otherwise. With one seed the sign decides."]
    md = _markdown("Claims", "The paper's findings, checked on this run", df, pipeline, notes)
    paths = [out / "claims.md", out / "claims.csv"]
    atomic_write_text(paths[0], md)
    atomic_write_text(paths[1], df.to_csv(index=False))
    return paths


def build_report(pipeline_config: Path, results: Path, out: Path, runs: Path | None = None) -> list[Path]:
    """Write ``table{1..4}.{md,csv,tex}``, ``figures/`` and ``README.md`` into ``out``; log them to the
    pipeline's MLflow parent run; return the paths written. ``runs``: send tracking logs an outage left."""
    from hmsa import report_figures as figs

    pipeline = expand_seeds(yaml.safe_load(Path(pipeline_config).read_text()))
    results, out = Path(results), Path(out)
    if runs is not None and os.environ.get("HMSA_TRACKING", "1") != "0":
        from hmsa.tracking import sync

        sync([Path(runs)])  # the curves below read MLflow: send what an outage held back first
    written = _tables(pipeline, results, out, paper_tables())
    fig_dir = out / "figures"
    figures = {"Figure 3: per-scale predictions and attention maps (white = attention close to 1)":
               figs.figure3(pipeline, results, fig_dir),
               "Figure 4: image, original coarse label, auto-label (teacher, hard threshold)":
               figs.figure4(pipeline, results, fig_dir),
               "Figure 5: image, prediction of the final model, ground truth":
               figs.figure5(pipeline, results, fig_dir),
               "Training curves (loss, learning rate) of every training stage, from MLflow":
               figs.training_curves(pipeline, results, fig_dir)}
    written += [p for paths in figures.values() for p in paths]
    index = out / "README.md"
    atomic_write_text(index, _index(pipeline, results, out, written, figures))
    written.append(index)
    _log_to_parent(out, written)
    return written


def _log_to_parent(out: Path, paths: list[Path]) -> None:
    """The report goes to the parent run of this pipeline invocation (Snakemake sets the id)."""
    from hmsa import tracking

    invocation = os.environ.get(tracking.ENV_INVOCATION, "")
    if not invocation or os.environ.get("HMSA_TRACKING", "1") == "0":
        return
    try:
        exp = tracking.ensure_experiment(os.environ.get(tracking.ENV_EXPERIMENT, tracking.DEFAULT_EXPERIMENT))
        parent = tracking.get_or_create_parent(invocation, exp, {})
    except Exception as exc:  # noqa: BLE001 - the report files are the product; MLflow is a copy
        log.warning("report not logged to MLflow (server unreachable?): %s", exc)
        return
    tracker = tracking.StageTracker(parent, reopen=False)
    for p in paths:
        rel = p.parent.relative_to(out)
        tracker.log_artifact(p, "report" if str(rel) == "." else f"report/{rel}")
    tracker.close()


def _index(pipeline: dict, results: Path, out: Path, written: list[Path], figures: dict[str, list[Path]]) -> str:
    what = {"table1": "Table 1: fusion methods on Mapillary val (DeepLabV3+), paper vs ours",
            "table2": "Table 2: MS attention × auto-labelling ablation on Cityscapes val",
            "table3": "Table 3: per-class IoU of the final Cityscapes model",
            "table4": "Table 4: Mapillary val mIoU",
            "claims": "the paper's findings (Tables 1-2) with the paper's Δ, ours over seeds, and a verdict",
            "convergence": "whether each training stage's loss is flat over the last fifth of its run"}
    lines = ["# Reports", "", f"Generated by `hmsa report` from `{results}/` (pipeline `{pipeline['name']}`).", "",
             "| file | what it shows |", "|---|---|"]
    lines += [f"| {t}.md / .csv{'' if t in ('claims', 'convergence') else ' / .tex'} | {w} |" for t, w in what.items()
              if (out / f"{t}.md") in written]
    for caption, paths in figures.items():
        lines += [f"| {p.relative_to(out)} | {caption} |" for p in paths]
    if (out / "benchmarks").is_dir():
        lines.append("| benchmarks/ | speed and memory figures written by `benchmarks/*.py` |")
    missing = [c.split(":")[0] for c, p in figures.items() if not p]
    lines += ["", "Each table cell names the MLflow run it came from (`mlflow ui`, or `hmsa compare RUN_A RUN_B` "
              "for two runs' per-class IoU side by side)."]
    if missing:
        lines.append(f"Not drawn (their inputs were not produced by this pipeline): {', '.join(missing)}.")
    return "\n".join(lines) + "\n"
