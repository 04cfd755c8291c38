"""Tables 1-4 of the paper rebuilt from the evaluations' metrics files: each row's gain over the table's
baseline beside the paper's gain for the same rows, then the absolute mIoU of both, and the MLflow run
behind each cell (Markdown, CSV, LaTeX); the figures (``hmsa.reporting.figures``); one HTML page with all of
it (``hmsa.reporting.page``); an index; all of it also logged to the pipeline's MLflow parent run."""

from __future__ import annotations

import importlib.resources
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hmsa.io import atomic_write_text
from hmsa.orchestration.pipeline import expand_seeds
from hmsa.reporting import text
from hmsa.reporting.claims import claims_table, mean_std, seed_values

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


def _ours(cells: list[dict], gains: list[float], paper_gain: float) -> dict[str, Any]:
    """A row's columns from the paper's gain on: the gains side by side first (on synthetic data only
    gains and orderings compare), then the absolute numbers, the seeds and the MLflow runs last."""
    m, s = mean_std([c["miou"] for c in cells])
    g, gs = mean_std(gains)
    return {"paper gain": round(paper_gain, 2), "ours gain": round(g, 2),
            "gain std": None if gs is None else round(gs, 2), "ours mIoU": round(m, 2),
            "ours std": None if s is None else round(s, 2), "seeds": len(cells),
            "MLflow run": " ".join(c["run"] for c in cells)}


def table1(spec: list[dict], results: Path, paper: dict, pipeline: dict | None = None) -> pd.DataFrame:
    cells, gains = _seeded(spec, results, pipeline or {})
    base = paper["rows"][0]["miou"]
    rows = []
    for p, r, c, g in zip(paper["rows"], spec, cells, gains, strict=True):
        ours = _ours(c, g, p["miou"] - base)
        run = ours.pop("MLflow run")
        rows.append({"method": p["method"], "eval scales": ",".join(f"{s:g}" for s in p["eval_scales"]), **ours,
                     "paper mIoU": p["miou"], "train FLOPs (paper, rel.)": p["train_flops_relative"],
                     "setting": r["setting"], "MLflow run": run})
    return _reorder(pd.DataFrame(rows))


def table2(spec: list[dict], results: Path, paper: dict, pipeline: dict | None = None) -> pd.DataFrame:
    cells, gains = _seeded(spec, results, pipeline or {})
    rows = []
    for p, r, c, g in zip(paper["rows"], spec, cells, gains, strict=True):
        ours = _ours(c, g, p["gain"])
        run = ours.pop("MLflow run")
        rows.append({"MS attention": p["ms_attention"], "auto-labelling": p["auto_labelling"], **ours,
                     "paper mIoU": p["miou"], "setting": r["setting"], "MLflow run": run})
    return _reorder(pd.DataFrame(rows))


def _reorder(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's absolute mIoU beside ours (after the gains), the seeds and runs at the end."""
    head = [c for c in df.columns if c not in ("ours mIoU", "ours std", "paper mIoU", "seeds", "setting",
                                                 "MLflow run", "train FLOPs (paper, rel.)")]
    tail = ["paper mIoU", "ours mIoU", "ours std", "seeds", "train FLOPs (paper, rel.)", "setting", "MLflow run"]
    return df[head + [c for c in tail if c in df.columns]]


def table3(spec: dict, results: Path, paper: dict, pipeline: dict | None = None) -> pd.DataFrame:
    """Per-class IoU; two mIoU rows: over the paper's 19 classes (ours only when all 19 are scored) and
    over the classes present in our split (the paper's mean over those same classes beside it)."""
    c = _cell(results, spec, pipeline)
    withheld = c["pixels"] == 0  # e.g. the real Cityscapes test split: its labels are not public
    rows = []
    for name, p in zip(paper["classes"], paper["rows"]["ours"], strict=True):
        # Our class names use spaces ("traffic light"); the paper table uses underscores.
        v = c["per_class"].get(name.replace("_", " "), c["per_class"].get(name))
        ours = None if v is None or withheld else round(100 * v, 2)
        rows.append({"class": name, "paper IoU": p, "ours IoU": ours, "Δ vs paper": _delta(ours, p)})
    n = len(rows)
    present = [r for r in rows if r["ours IoU"] is not None]
    all_in = len(present) == n and not withheld
    ours_all = round(sum(r["ours IoU"] for r in present) / n, 2) if all_in else None
    rows.append({"class": f"mIoU over the paper's {n} classes", "paper IoU": paper["miou"]["ours"],
                 "ours IoU": ours_all, "Δ vs paper": _delta(ours_all, paper["miou"]["ours"])})
    if present and not all_in:
        paper_mean = round(sum(r["paper IoU"] for r in present) / len(present), 2)
        ours_mean = round(sum(r["ours IoU"] for r in present) / len(present), 2)
        rows.append({"class": f"mIoU over the {len(present)} classes present", "paper IoU": paper_mean,
                     "ours IoU": ours_mean, "Δ vs paper": _delta(ours_mean, paper_mean)})
    df = pd.DataFrame(rows)
    df.attrs.update(run=c["run"], split=c["split"], images=c["images"], withheld=withheld, present=len(present),
                    classes=n)
    return df


def table4(spec: dict, results: Path, paper: dict, pipeline: dict | None = None) -> pd.DataFrame:
    c = _cell(results, spec, pipeline)
    rows = [{"method": p["method"], "paper mIoU": p["miou"], "ours mIoU": None, "MLflow run": "", "Δ vs paper": None}
            for p in paper["rows"]]
    ours = rows[-1]
    ours.update({"ours mIoU": round(c["miou"], 2), "Δ vs paper": _delta(c["miou"], ours["paper mIoU"]),
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
    lines = [f"# {title}", "", caption, "", _dataset_line(pipeline), f"Pipeline: `{pipeline['name']}`.", "",
             markdown_body(df), ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def markdown_body(df: pd.DataFrame) -> str:
    # NaN (a cell the paper has but we do not reproduce) prints as a dash, not "nan"
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=".2f", missingval="—")


def _tex_escape(value: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(value))


def _latex(name: str, caption: str, df: pd.DataFrame) -> str:
    """A booktabs table; Δ in column headers as math so that plain pdflatex builds it."""
    body = df.astype(object).where(df.notna(), None).rename(columns=lambda c: c.replace("Δ", "HMSADELTA"))
    tex = body.to_latex(index=False, escape=True, na_rep="--", float_format="%.2f", caption=_tex_escape(caption),
                        label=f"tab:{name}")
    return tex.replace("HMSADELTA", r"$\Delta$")


def _tables(pipeline: dict, results: Path, out: Path, paper: dict) -> tuple[list[Path], list[dict]]:
    """``table{1..4}.{md,csv,tex}``; also the sections of the HTML page (title, caption, table, notes)."""
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
    gain_note = ("Gains: each row's mIoU minus row 1's (the table's baseline), ours beside the paper's for the same "
                 "rows; ours paired by seed. The paper's absolute mIoU follows for reference.")
    written, sections = [], []
    # A pipeline may reproduce only some tables (e.g. a quick test config): build those it names.
    for name, (fn, notes) in builders.items():
        if name not in spec:
            continue
        df = fn(spec[name], results, paper[name], pipeline)
        rows = text.evaluations(spec[name])
        df.attrs["runs"] = [c["run"] for r in rows for c in seed_values(results, pipeline, r)]
        scored = text.scored_on(results, pipeline, spec[name])
        title = name.replace("table", "Table ")
        if name == "table3":
            title = text.table3_title(pipeline, scored, bool(df.attrs.get("withheld")))
        caption = f"Paper: {paper[name]['caption']}"
        notes = ([text.split_line(pipeline, scored)] + ([gain_note] if "ours gain" in df.columns else [])
                 + notes + (text.table3_notes(df) if name == "table3" else []) + text.dash_notes(df))
        prov = text.provenance(df.attrs["runs"], pipeline, list(dict.fromkeys(ds for ds, _, _ in scored)))
        md = _markdown(title, caption, df, pipeline, notes) + "\n".join(prov)
        paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.tex"]
        atomic_write_text(paths[0], md if md.endswith("\n") else md + "\n")
        atomic_write_text(paths[1], df.to_csv(index=False))
        atomic_write_text(paths[2], _latex(name, f"{title}. {caption}", df))
        written += paths
        sections.append({"name": name, "title": title, "caption": caption, "df": df, "notes": notes,
                         "provenance": [line for line in prov if line]})
    extras = (_claims(pipeline, results, out, paper), _convergence(pipeline, results, out),
              _autolabel(pipeline, results, out))
    for extra in extras:
        if extra:
            written += extra[0]
            sections.append(extra[1])
    return written, sections


def _convergence(pipeline: dict, results: Path, out: Path) -> tuple[list[Path], dict] | None:
    """``convergence.{md,csv}``: is each training stage's loss flat over the last fifth of its run?"""
    from hmsa.reporting.convergence import RULE, convergence_table

    df = convergence_table(pipeline, results)
    if df is None:
        return None
    flat = int((df["verdict"] == "flat").sum())
    notes = [RULE,
             f"{flat} of {len(df)} training stages flat. Loss: the training loss (all terms), each point the mean "
             "over the batches since the one before.",
             *text.dash_notes(df)]
    return _section(out, "convergence", "Convergence", "Training loss over the last fifth of each training stage",
                    df, pipeline, notes)


def _autolabel(pipeline: dict, results: Path, out: Path) -> tuple[list[Path], dict] | None:
    """``autolabel.{md,csv}``: auto-labels and coarse labels against the truth (embedded data only)."""
    from hmsa.reporting.autolabel import CAPTION, TITLE, autolabel_section

    section = autolabel_section(pipeline, results)
    if section is None:
        return None
    return _section(out, "autolabel", TITLE, CAPTION, section[0], pipeline, section[1])


def _claims(pipeline: dict, results: Path, out: Path, paper: dict) -> tuple[list[Path], dict] | None:
    """``claims.{md,csv}``: the paper's findings, the paper's Δ, ours over seeds, a verdict."""
    df = claims_table(pipeline, results, paper)
    if df is None:
        return None
    seeds = ", ".join(str(s) for s in pipeline.get("seeds") or [0])
    notes = [f"Training seeds: {seeds}. Ours: the same difference of table cells computed per seed (all rows "
             "of a seed trained with that seed), mean and sample standard deviation over seeds.",
             "Verdict: holds = mean > 0 and larger than one standard deviation; contradicted = mean < 0 and "
             "larger than one standard deviation; within noise otherwise. With one seed the sign decides.",
             *text.dash_notes(df)]
    return _section(out, "claims", "Claims", "The paper's findings, checked on this run", df, pipeline, notes)


def _section(out: Path, name: str, title: str, caption: str, df: pd.DataFrame, pipeline: dict,
             notes: list[str]) -> tuple[list[Path], dict]:
    """``<name>.{md,csv}`` of a section that is not one of the paper's tables, and its entry for the page."""
    paths = [out / f"{name}.md", out / f"{name}.csv"]
    atomic_write_text(paths[0], _markdown(title, caption, df, pipeline, notes))
    atomic_write_text(paths[1], df.to_csv(index=False))
    return paths, {"name": name, "title": title, "caption": caption, "df": df, "notes": notes, "provenance": []}


FIGURES = {  # caption: the reporting.figures function drawing it
    "Figure 3: per-scale predictions and attention maps of every evaluation that saved them; the colour "
    "bar gives the attention (1 = that scale's prediction is used)": "figure3",
    "Figure 4: image, original coarse label, auto-label (the teacher's hard labels)": "figure4",
    "Figure 5: image, prediction of the final model, ground truth": "figure5",
    "Training curves (loss, learning rate) of every training stage, from MLflow": "training_curves",
}


def build_report(pipeline_config: Path, results: Path, out: Path, runs: Path | None = None) -> list[Path]:
    """Write ``table{1..4}.{md,csv,tex}``, ``figures/``, ``README.md`` and the one-page ``index.html``
    into ``out``; log them and each table's headline numbers to the pipeline's MLflow parent run; return
    the paths written. ``runs``: send tracking logs an outage left."""
    from hmsa.reporting import figures as figs
    from hmsa.reporting.page import write_page

    pipeline = expand_seeds(yaml.safe_load(Path(pipeline_config).read_text()))
    results, out = Path(results), Path(out)
    if runs is not None and os.environ.get("HMSA_TRACKING", "1") != "0":
        from hmsa.tracking.sender import sync

        sync([Path(runs)])  # the curves below read MLflow: send what an outage held back first
    written, sections = _tables(pipeline, results, out, paper_tables())
    fig_dir = out / "figures"
    figures = {caption: getattr(figs, fn)(pipeline, results, fig_dir) for caption, fn in FIGURES.items()}
    written += [p for paths in figures.values() for p in paths]
    page = out / "index.html"
    write_page(page, f"hmsa report: pipeline {pipeline['name']}", [_dataset_line(pipeline),
               f"Pipeline `{pipeline['name']}`, results from `{results}/`."], sections, figures)
    written.append(page)
    index = out / "README.md"
    atomic_write_text(index, _index(pipeline, results, out, written, figures))
    written.append(index)
    _log_to_parent(out, written, summary_metrics(sections))
    return written


def summary_metrics(sections: list[dict]) -> dict[str, float]:
    """Each table's headline numbers for the parent run: ``table2/row1_miou``, ``table2/row1_gain``, ...,
    ``table3/miou``, ``table4/miou`` (percent)."""
    out: dict[str, float] = {}
    for sec in sections:
        name, df = sec["name"], sec["df"]
        if name in ("table1", "table2"):
            for i, (miou, gain) in enumerate(zip(df["ours mIoU"], df["ours gain"], strict=True), start=1):
                out[f"{name}/row{i}_miou"], out[f"{name}/row{i}_gain"] = float(miou), float(gain)
        elif name == "table3":
            for label, key in ((f"mIoU over the paper's {df.attrs.get('classes', 19)} classes", "miou_all_classes"),
                               (f"mIoU over the {df.attrs.get('present')} classes present", "miou_present_classes")):
                hit = df.loc[df["class"] == label, "ours IoU"]
                if len(hit) and pd.notna(hit.iloc[0]):
                    out[f"table3/{key}"] = float(hit.iloc[0])
        elif name == "table4":
            ours = df["ours mIoU"].dropna()
            if len(ours):
                out["table4/miou"] = float(ours.iloc[-1])
        elif name == "autolabel":  # coverage and accuracy of both sources
            from hmsa.reporting.autolabel import headline_metrics

            out.update(headline_metrics(df))
    return out


def _log_to_parent(out: Path, paths: list[Path], metrics: dict[str, float] | None = None) -> None:
    """The report goes to the parent run of this pipeline invocation (Snakemake sets the id), and the
    tables' headline numbers become its metrics (``hmsa.tracking.parent.log_parent_metrics``)."""
    from hmsa import tracking
    from hmsa.tracking.parent import get_or_create_parent, log_parent_metrics

    invocation = os.environ.get(tracking.ENV_INVOCATION, "")
    if not invocation or os.environ.get("HMSA_TRACKING", "1") == "0":
        return
    try:
        exp = tracking.ensure_experiment(os.environ.get(tracking.ENV_EXPERIMENT, tracking.DEFAULT_EXPERIMENT))
        parent = get_or_create_parent(invocation, exp, {})
    except Exception as exc:  # noqa: BLE001 - the report files are the product; MLflow is a copy
        log.warning("report not logged to MLflow (server unreachable?): %s", exc)
        return
    tracker = tracking.StageTracker(parent, reopen=False)
    for p in paths:
        rel = p.parent.relative_to(out)
        tracker.log_artifact(p, "report" if str(rel) == "." else f"report/{rel}")
    tracker.close()
    if metrics:
        try:
            log_parent_metrics(metrics, run_id=parent)
        except Exception as exc:  # noqa: BLE001 - as above: MLflow holds a copy
            log.warning("table metrics not logged to the parent run: %s", exc)


def _index(pipeline: dict, results: Path, out: Path, written: list[Path], figures: dict[str, list[Path]]) -> str:
    what = {"table1": "Table 1: fusion methods on Mapillary val (DeepLabV3+), paper vs ours",
            "table2": "Table 2: MS attention × auto-labelling ablation on Cityscapes val",
            "table3": "Table 3: per-class IoU of the final Cityscapes model (mIoU over the paper's 19 classes "
                      "and over the classes present)",
            "table4": "Table 4: Mapillary val mIoU",
            "claims": "the paper's findings (Tables 1-2) with the paper's Δ, ours over seeds, and a verdict",
            "convergence": "whether each training stage's loss is flat over the last fifth of its run"}
    lines = ["# Reports", "", f"Generated by `hmsa report` from `{results}/` (pipeline `{pipeline['name']}`).", "",
             "| file | what it shows |", "|---|---|"]
    lines += ["| index.html | everything below on one page (tables, notes, figures with captions; images "
              "embedded, so the file works anywhere) |"]
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
