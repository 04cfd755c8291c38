"""`hmsa report` on generated results: every cell equals the metrics file it came from, gains sit beside
the paper's, every table says its split, image count and what its dashes mean, the LaTeX and CSV agree,
the figures are labelled PNGs, the index lists them, and the parent run gets a copy and the metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hmsa import tracking
from hmsa.data.labels import CITYSCAPES_CLASSES
from hmsa.evaluation.settings import parse_setting
from hmsa.io import atomic_write_json
from hmsa.reporting.report import build_report, paper_tables
from hmsa.reporting.visualize import colorize, grid_meta, label_ids, read_tiles, save_scale_maps

ROOT = Path(__file__).resolve().parents[1]


def _metrics(rng: np.random.Generator, settings: list[str], run: str) -> dict:
    out = {}
    for s in settings:
        per_class = {c: float(rng.uniform(0, 1)) for c in CITYSCAPES_CLASSES}
        per_class[CITYSCAPES_CLASSES[3]] = None  # a class absent from the split
        vals = [v for v in per_class.values() if v is not None]
        out[parse_setting(s).name] = {"miou": float(np.mean(vals)), "per_class": per_class}
    return {"dataset": "cityscapes", "split": "val", "images": 2, "settings": out, "mlflow_run_id": run}


def _quality(rng: np.random.Generator) -> dict:
    """A manifest's ``quality``: coarse labels right where they label, auto-labels denser and noisier."""
    from hmsa.autolabel_quality import joint_counts, summarize

    truth = rng.integers(0, 19, (16, 32))
    coarse = np.where(rng.random(truth.shape) < 0.4, truth, 255)
    auto = np.where(rng.random(truth.shape) < 0.8, np.where(rng.random(truth.shape) < 0.9, truth, 0), 255)
    return summarize(joint_counts(truth, coarse, auto, 19), list(CITYSCAPES_CLASSES))


def _results(tmp: Path, data: Path, pipeline: dict) -> Path:
    """metrics.json per evaluation (random numbers), Figure 3 grids, an auto-label stage, a train run."""
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(7)
    results = tmp / "results"
    client = MlflowClient()
    exp = tracking.ensure_experiment("report-test")
    for name, ev in pipeline["evaluate"].items():
        run = client.create_run(exp, tags={"hmsa.stage": name, "hmsa.git_commit": "abc123"}).info.run_id
        atomic_write_json(results / name / "metrics.json", _metrics(rng, ev["settings"], run))
    g = torch.Generator().manual_seed(0)
    for i in range(2):  # the final model's attention grids (what evaluate's save_maps writes)
        per_scale = {s: {"logits": torch.randn(1, 19, 16, 32, generator=g), "attn": torch.rand(1, 1, 16, 32)}
                     for s in (0.5, 1.0)}
        grid = results / "evaluate_student/maps" / f"{i:03d}_hierarchical_0.5-1_flip.png"
        save_scale_maps(grid, torch.randn(3, 32, 64, generator=g),
                        torch.randint(0, 19, (32, 64), generator=g), torch.randint(0, 19, (32, 64), generator=g),
                        per_scale, "cityscapes")
    names = sorted(p.relative_to(data / "cityscapes/gtCoarse/train_extra").as_posix()[: -len("_gtCoarse_labelIds.png")]
                   for p in (data / "cityscapes/gtCoarse/train_extra").rglob("*_labelIds.png"))[:2]
    labels = tmp / "runs/autolabel/labels"
    for n in names:
        (labels / "train_extra" / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 19, (64, 128), dtype=np.uint8)).save(
            labels / "train_extra" / f"{n}_gtCoarse_labelIds.png")
    atomic_write_json(results / "autolabel/manifest.json", {"split": "train_extra", "labels_dir": str(labels),
                                                            "per_image": {n: 0.5 for n in names},
                                                            "quality": _quality(rng)})
    run = client.create_run(exp).info.run_id
    for step in range(1, 6):
        client.log_metric(run, "loss/total", 2.0 / step, step=step)
        client.log_metric(run, "lr", 0.01 * (1 - step / 6), step=step)
    atomic_write_json(results / "cityscapes_teacher/train.json", {"mlflow_run_id": run})
    steps = np.arange(10, 1001, 10)  # curves.csv as training writes them: one still falling, one flat
    falling = 3.0 - 0.002 * steps + rng.normal(0, 0.02, steps.size)
    flat = 1.0 + rng.normal(0, 0.1, steps.size)
    for stage, loss in (("cityscapes_teacher", falling), ("table1_single", flat)):
        lines = ["step,loss,lr"] + [f"{s},{v:.5f},0.01" for s, v in zip(steps, loss, strict=True)]
        (results / stage / "curves.csv").parent.mkdir(parents=True, exist_ok=True)
        (results / stage / "curves.csv").write_text("\n".join(lines) + "\n")
    return results


@pytest.fixture
def built(embedded_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict, list]:
    monkeypatch.chdir(tmp_path)
    pipeline = yaml.safe_load((ROOT / "configs/pipeline/embedded.yaml").read_text())
    pipeline["data"]["cityscapes"] = str(embedded_data / "cityscapes")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump(pipeline))
    results = _results(tmp_path, embedded_data, pipeline)
    monkeypatch.setenv(tracking.ENV_INVOCATION, "inv-report")
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, "report-test")
    written = build_report(cfg, results, tmp_path / "reports", tmp_path / "runs")
    return results, tmp_path / "reports", pipeline, written


def test_cells_equal_the_metrics_files(built: tuple) -> None:
    results, out, pipeline, _ = built
    for table in ("table1", "table2"):
        with open(out / f"{table}.csv", newline="") as fh:
            cells = list(csv.DictReader(fh))
        tex = (out / f"{table}.tex").read_text()
        assert len(cells) == len(pipeline["tables"][table])
        base = None
        for row, cell in zip(pipeline["tables"][table], cells, strict=True):
            m = json.loads((results / row["evaluation"] / "metrics.json").read_text())
            miou = 100 * m["settings"][parse_setting(row["setting"]).name]["miou"]
            base = miou if base is None else base
            assert float(cell["ours mIoU"]) == pytest.approx(miou, abs=0.005)
            assert float(cell["ours gain"]) == pytest.approx(miou - base, abs=0.01)  # over the table's row 1
            assert cell["seeds"] == "1" and cell["ours std"] == ""
            assert cell["MLflow run"] == m["mlflow_run_id"] != ""
            assert f"{float(cell['ours mIoU']):.2f}" in tex
    spec = pipeline["tables"]["table3"]
    m = json.loads((results / spec["evaluation"] / "metrics.json").read_text())
    per_class = m["settings"][parse_setting(spec["setting"]).name]["per_class"]
    with open(out / "table3.csv", newline="") as fh:
        rows = {r["class"].replace("_", " "): r for r in csv.DictReader(fh)}
    for name, v in per_class.items():
        got = rows[name]["ours IoU"]
        assert (got == "" if v is None else float(got) == pytest.approx(100 * v, abs=0.005))
    # one class is absent: no mIoU of ours over all 19; over the 18 present, the paper's mean of the same 18
    present = [c for c, v in per_class.items() if v is not None]
    paper = dict(zip(paper_tables()["table3"]["classes"], paper_tables()["table3"]["rows"]["ours"], strict=True))
    assert rows["mIoU over the paper's 19 classes"]["ours IoU"] == ""
    assert rows["mIoU over the paper's 19 classes"]["paper IoU"] == "85.1"
    row18 = rows["mIoU over the 18 classes present"]
    assert float(row18["ours IoU"]) == pytest.approx(100 * np.mean([per_class[c] for c in present]), abs=0.01)
    assert float(row18["paper IoU"]) == pytest.approx(np.mean([paper[c.replace(" ", "_")] for c in present]), abs=0.01)
    md = (out / "table3.md").read_text()
    assert "stage `evaluate_student`, git `abc123`" in md  # provenance from the run's tags
    assert md.startswith("# Table 3: per-class IoU, ours on the embedded dataset's labelled `val` split (2 images)")
    assert "— in *ours IoU*: the class occurs neither" in md  # the dash explained
    # the dataset's DVC version is named as such (none here: no DVC repository); the model hash is not "data"
    assert "dataset cityscapes (`" in md and "DVC `unversioned`" in md and "data `" not in md
    for table in ("table1", "table2", "table3", "table4"):
        md = (out / f"{table}.md").read_text()
        assert "Ours scored on the `val` split, 2 images (the embedded synthetic" in md, table
    for table in ("table1", "table2"):  # the gains side by side, no Δ against the paper's absolute numbers
        cols = (out / f"{table}.csv").read_text().splitlines()[0].split(",")
        assert cols.index("ours gain") == cols.index("paper gain") + 1 and not any("Δ" in c for c in cols)
        assert "— in *ours std*: one seed" in (out / f"{table}.md").read_text()
    assert (out / "table4.csv").read_text().splitlines()[0].endswith(",Δ vs paper")  # moved last
    with open(out / "claims.csv", newline="") as fh:
        claims = list(csv.DictReader(fh))
    assert len(claims) == 8 and all(c["verdict"].endswith("(1 seed)") for c in claims)


def test_convergence_table_reads_every_training_curve(built: tuple) -> None:
    _, out, _, written = built
    with open(out / "convergence.csv", newline="") as fh:
        rows = {r["stage"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"cityscapes_teacher", "table1_single"}  # the stages whose curves exist
    assert rows["cityscapes_teacher"]["verdict"] == "falling" and rows["table1_single"]["verdict"] == "flat"
    assert rows["table1_single"]["iterations"] == "1000" and rows["table1_single"]["points in last fifth"] == "20"
    assert out / "convergence.md" in written and "1 of 2 training stages flat" in (out / "convergence.md").read_text()


def test_latex_figures_index_and_parent_run(built: tuple) -> None:
    from mlflow.tracking import MlflowClient

    from hmsa.reporting.figures import figure5_rows

    results, out, pipeline, written = built
    tex = (out / "table3.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 and r"$\Delta$" in tex and "\\bottomrule" in tex
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "figure5_qualitative.png" in figs and "training_curves.png" in figs
    assert any(f.startswith("figure3_evaluate_student") for f in figs)
    assert any(f.startswith("figure4_autolabel") for f in figs)
    for p in (out / "figures").glob("*.png"):
        with Image.open(p) as img:
            img.verify()
            assert img.format == "PNG"
    # Figure 5 rows are image | prediction | ground truth, cut from the Figure 3 grids
    grid = read_tiles(results / "evaluate_student/maps/000_hierarchical_0.5-1_flip.png", 0)
    (name, fig5), _ = figure5_rows(pipeline, results)
    assert name == "000" and np.array_equal(fig5[1], grid[2]) and np.array_equal(fig5[2], grid[1])
    # the drawn figures are titled panels, larger than the raw tiles they show
    with Image.open(out / "figures/figure3_evaluate_student_000_hierarchical_0.5-1_flip.png") as img:
        assert img.width > 3 * 64 and img.height > 3 * 32
    curves = (out / "figures/training_curves.csv").read_text().splitlines()
    assert "cityscapes_teacher,loss/total,5,0.4" in curves
    index = (out / "README.md").read_text()
    for p in written:
        if p.name != "README.md":
            assert str(p.relative_to(out)) in index or p.stem.split(".")[0] in index
    client = MlflowClient()
    exp = client.get_experiment_by_name("report-test").experiment_id
    (parent,) = client.search_runs([exp], "tags.`hmsa.invocation` = 'inv-report'")
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/table1.tex", "report/README.md", "report/index.html", "report/figures"} <= logged
    # each table's headline numbers become the parent run's metrics
    with open(out / "table2.csv", newline="") as fh:
        table2 = list(csv.DictReader(fh))
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["table2/row1_miou"] == pytest.approx(float(table2[0]["ours mIoU"]))
    assert metrics["table2/row4_gain"] == pytest.approx(float(table2[3]["ours gain"]))
    assert "table3/miou_present_classes" in metrics and "table3/miou_all_classes" not in metrics
    # the auto-label section: its `all` row is the manifest's overall figures, and goes to the parent run
    quality = json.loads((results / "autolabel/manifest.json").read_text())["quality"]["sources"]
    with open(out / "autolabel.csv", newline="") as fh:
        overall = {r["class"]: r for r in csv.DictReader(fh)}["all"]
    for src, col in (("coarse", "coarse"), ("autolabel", "auto")):
        assert float(overall[f"{col} coverage %"]) == pytest.approx(100 * quality[src]["coverage"], abs=0.005)
        both = float(overall[f"{col} precision where both label %"])
        assert both == pytest.approx(100 * quality[src]["accuracy_both"], abs=0.005)
        assert metrics[f"autolabel/{col}_accuracy_both"] == pytest.approx(both)
    assert float(overall["coarse precision %"]) == 100.0
    page = (out / "index.html").read_text()
    assert "Auto-labels" in page and "1 model(s)) on the" in page


def test_autolabel_section_pools_seeds_and_reports_the_teacher(tmp_path: Path) -> None:
    """Per-seed auto-labels pool into one table (their joint counts add up); the teacher line gives every
    setting of the teacher's evaluations as mean ± std over its seeds; real data (no truth): no section."""
    from hmsa.autolabel_quality import from_cells, summarize
    from hmsa.orchestration.pipeline import expand_seeds
    from hmsa.reporting.autolabel import autolabel_section

    pipeline = yaml.safe_load((ROOT / "configs/pipeline/embedded.yaml").read_text())
    pipeline["seeds"] = [0, 1]
    pipeline = expand_seeds(pipeline)
    rng = np.random.default_rng(3)
    qualities = [_quality(rng) for _ in range(2)]
    stages = list(pipeline["autolabel"])  # seed 0's keeps the stage's name
    for stage, q in zip(stages, qualities, strict=True):
        atomic_write_json(tmp_path / stage / "manifest.json", {"quality": q})
    evaluations = pipeline["seed_runs"]["evaluate_table2_attention_coarse"]
    settings = pipeline["evaluate"][evaluations[0]]["settings"]
    assert "single:1" in settings  # the teacher's single-scale mIoU is measured in every run
    for evaluation, miou in zip(evaluations, ([0.60, 0.50], [0.62, 0.54]), strict=True):
        atomic_write_json(tmp_path / evaluation / "metrics.json",
                          {"split": "val", "images": 4, "settings": {
                              parse_setting(s).name: {"miou": m} for s, m in zip(settings, miou, strict=True)}})
    df, notes = autolabel_section(pipeline, tmp_path)
    pooled = summarize(sum(from_cells(q["joint_counts"], 19) for q in qualities), list(CITYSCAPES_CLASSES))
    overall = df.set_index("class").loc["all"]
    assert overall["auto labelled px"] == pooled["sources"]["autolabel"]["labelled"]
    assert overall["auto precision %"] == pytest.approx(100 * pooled["sources"]["autolabel"]["accuracy"], abs=0.005)
    for metric in ("mislabelled", "coverage"):  # every ratio in percent
        assert overall[f"auto {metric} %"] == pytest.approx(100 * pooled["sources"]["autolabel"][metric], abs=0.005)
    assert len(df) == 20 and df["class"].iloc[0] == "road"
    teacher = notes[-1]
    assert teacher.startswith("The teacher (`cityscapes_teacher`, `cityscapes_teacher_seed1`, 2 model(s))")
    assert "`single:1` 52.00 ± 2.83" in teacher and "`hierarchical:0.5,1,2:flip` 61.00 ± 1.41" in teacher
    atomic_write_json(tmp_path / stages[1] / "manifest.json", {"split": "train_extra"})
    assert autolabel_section(pipeline, tmp_path) is None


def test_seeds_aggregate_and_claims_verdicts(tmp_path: Path) -> None:
    """Three seeds: each cell is the mean ± std over seeds, gains are paired by seed, and a claim's
    verdict follows the rule (holds / within noise / contradicted)."""
    from hmsa.orchestration.pipeline import expand_seeds
    from hmsa.reporting.claims import claims_table
    from hmsa.reporting.report import paper_tables, table2

    pipeline = yaml.safe_load((ROOT / "configs/pipeline/embedded.yaml").read_text())
    pipeline["seeds"] = [0, 1, 2]
    pipeline = expand_seeds(pipeline)
    spec = pipeline["tables"]["table2"]
    # per seed: rows 1..4; row 2 beats row 1 by 2 ± small, row 4 - row 3 flips sign across seeds
    values = {0: [50, 52, 51, 50], 1: [40, 42.5, 41, 42], 2: [45, 46.5, 46, 45.5]}
    for i, row in enumerate(spec):
        for seed, stage in zip((0, 1, 2), pipeline["seed_runs"][row["evaluation"]], strict=True):
            name = parse_setting(row["setting"]).name
            atomic_write_json(tmp_path / stage / "metrics.json",
                              {"split": "val", "images": 3, "mlflow_run_id": f"r{seed}",
                               "settings": {name: {"miou": values[seed][i] / 100, "per_class": {}}}})
    df = table2(spec, tmp_path, paper_tables()["table2"], pipeline)
    assert df["ours mIoU"].tolist() == pytest.approx([45.0, 47.0, 46.0, 45.83], abs=0.01)
    assert df.loc[1, "ours gain"] == pytest.approx(2.0) and df.loc[1, "gain std"] == pytest.approx(0.5)
    assert df.loc[0, "MLflow run"] == "r0 r1 r2" and set(df["seeds"]) == {3}
    pipeline["tables"] = {"table2": spec}
    claims = claims_table(pipeline, tmp_path, paper_tables()).set_index("claim")
    assert claims.loc["MS attention gain > 0 with original coarse labels", "verdict"] == "holds"
    assert claims.loc["MS attention gain > 0 with auto-labels", "verdict"] == "within noise"  # -1, +1, -0.5
    assert claims.loc["auto-label gain > 0 with MS attention", "verdict"] == "contradicted"  # -2, -0.5, -1
    assert claims.loc["MS attention gain > 0 with original coarse labels", "paper Δ"] == pytest.approx(0.5)


def test_figure3_grid_records_its_scales_and_the_legend_finds_its_classes(tmp_path: Path) -> None:
    """The grid's PNG names its scales and dataset; the legend lists exactly the classes drawn, in the
    dataset's own colours (Mapillary's from hmsa.data.labels, not random ones)."""
    from hmsa.data.labels import MAPILLARY_V12_LABELS
    from hmsa.reporting.visualize import palette

    g = torch.Generator().manual_seed(1)
    per_scale = {s: {"logits": torch.randn(1, 66, 8, 16, generator=g), "attn": torch.rand(1, 1, 8, 16)}
                 for s in (0.25, 0.5, 1.0, 2.0)}
    path = tmp_path / "000_hierarchical_0.25-0.5-1-2.png"
    save_scale_maps(path, torch.randn(3, 8, 16), torch.full((8, 16), 13), torch.full((8, 16), 27), per_scale,
                    "mapillary")
    assert grid_meta(path) == {"hmsa.tile": "8x16", "hmsa.scales": "0.25,0.5,1,2", "hmsa.dataset": "mapillary"}
    assert palette("mapillary")[55].tolist() == MAPILLARY_V12_LABELS[55]["color"]
    label = np.array([[13, 27], [255, 27]])
    assert label_ids([colorize(label, "mapillary")], "mapillary") == [13, 27, 255]
    assert label_ids([colorize(label, "cityscapes")], "cityscapes") == [13, 255]  # 27: no Cityscapes class
    # no black padding: the per-scale rows are shorter than the first, their empty tile is white
    assert (read_tiles(path, 1)[2] == 255).all()


def test_training_curve_styles_are_distinct_for_many_seeded_stages() -> None:
    from hmsa.reporting.plots import curve_styles

    stages = [f"stage{i}" for i in range(8)] + [f"stage{i}_seed{k}" for i in range(3) for k in (1, 2)]
    styles = curve_styles(stages)
    assert len(set(styles.values())) == len(stages) == 14
    assert styles["stage1"][0] == styles["stage1_seed2"][0] != styles["stage2"][0]  # a stage keeps its colour
    many = curve_styles([f"s{i}" for i in range(25)])
    assert len(set(many.values())) == 25


def test_provenance_line_names_what_each_hash_is() -> None:
    """Runs tagged before the fix held the model file's hash in hmsa.data_version: it is printed as the
    model's. Newer runs hold the dataset's there. A local job is never called a SLURM job."""
    from hmsa.reporting.text import _run_line

    old = _run_line("r1", {"hmsa.stage": "ev", "hmsa.git_commit": "c", "hmsa.data_version": "m0d3l",
                           "hmsa.slurm_job_id": "123"})
    assert "dataset `not recorded by this run`" in old and "model file (DVC md5) `m0d3l`" in old
    assert "SLURM job `123`" in old
    new = _run_line("r2", {"hmsa.stage": "ev", "hmsa.git_commit": "c", "mlflow.source.git.commit": "c",
                           "hmsa.data_version": "d4t4.dir", "hmsa.input_versions": "model.pt=m0d3l",
                           "hmsa.local_job_id": "4242"})
    assert "dataset `d4t4.dir`" in new and "`model.pt=m0d3l`" in new and "local job `4242`" in new
    assert "SLURM" not in new
