"""The pipeline config is checked before anything runs: schema and cross-references, one line naming
the file and the key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hmsa.orchestration.pipeline import PipelineConfigError, check

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflows/schemas/pipeline.schema.yaml"
EMBEDDED = yaml.safe_load((ROOT / "configs/pipeline/embedded.yaml").read_text())


@pytest.mark.parametrize("name", ["embedded.yaml", "paper.yaml"])
def test_shipped_pipeline_configs_pass(name: str) -> None:
    check(yaml.safe_load((ROOT / "configs/pipeline" / name).read_text()), SCHEMA, [name])


@pytest.mark.parametrize("edit,key", [
    (lambda c: c.update(trian={}), "'<top level>'"),
    (lambda c: c["train"]["table1_single"].update(dataset="kitti"), "'train.table1_single.dataset'"),
    (lambda c: c["train"]["cityscapes_teacher"].update(init="nowhere"), "'train.cityscapes_teacher.init'"),
    (lambda c: c["evaluate"]["evaluate_student"].update(model="nobody"), "'evaluate.evaluate_student.model'"),
    (lambda c: c["tables"]["table1"][0].update(setting="maxpool:1"), "'tables.table1[0].setting'"),
    (lambda c: c["evaluate"]["evaluate_student"].update(settings=["bogus:1"]),
     "'evaluate.evaluate_student.settings.0'"),
])
def test_bad_config_names_file_and_key(edit: object, key: str) -> None:
    cfg = copy.deepcopy(EMBEDDED)
    edit(cfg)  # type: ignore[operator]
    with pytest.raises(PipelineConfigError) as err:
        check(cfg, SCHEMA, ["my.yaml"])
    msg = str(err.value)
    assert msg.startswith("my.yaml: ") and key in msg and "\n" not in msg


def test_snakemake_stops_with_the_one_line_error(tmp_path: Path) -> None:
    cfg = copy.deepcopy(EMBEDDED)
    cfg["train"]["table1_single"]["experimnt"] = "x.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n",
                          "--directory", str(tmp_path), "--configfile", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert f"{bad}: 'train.table1_single': Additional properties are not allowed" in out.stdout + out.stderr


def test_seeds_expand_training_and_what_depends_on_it() -> None:
    from hmsa.orchestration.pipeline import expand_seeds

    cfg = copy.deepcopy(EMBEDDED)
    cfg["seeds"] = [0, 3]
    cfg["train"]["cityscapes_student"]["per_seed"] = False
    check(cfg, SCHEMA, ["seeds"])
    out = expand_seeds(cfg)
    assert out["train"]["table2_avgpool_autolabel_seed3"] == {
        **{k: v for k, v in cfg["train"]["table2_avgpool_autolabel"].items()},
        "seed": 3, "init": "mapillary_pretrain_seed3", "autolabels": "autolabel_seed3"}
    assert out["autolabel"]["autolabel_seed3"]["teacher"] == "cityscapes_teacher_seed3"
    assert out["train"]["cityscapes_teacher"]["seed"] == 0
    # a stage trained once takes the first seed and the first seed's inputs
    assert "cityscapes_student_seed3" not in out["train"]
    assert out["train"]["cityscapes_student"]["autolabels"] == "autolabel"
    assert out["seed_runs"]["evaluate_student"] == ["evaluate_student"]
    explicit = ["evaluate_table1_explicit", "evaluate_table1_explicit_seed3"]
    assert out["seed_runs"]["evaluate_table1_explicit"] == explicit
    assert out["evaluate"]["evaluate_table1_explicit_seed3"]["model"] == "table1_explicit_seed3"



def test_stages_others_wait_for_get_priority_by_their_longest_chain() -> None:
    """The teacher (auto-labels -> three stages) starts before Table 2's baselines; per seed alike."""
    from hmsa.orchestration.pipeline import expand_seeds, stage_priorities

    cfg = copy.deepcopy(EMBEDDED)
    cfg["seeds"] = [0, 1]
    cfg["train"]["cityscapes_student"]["per_seed"] = False
    prio = stage_priorities(expand_seeds(cfg))
    for suffix in ("", "_seed1"):
        # pre-training -> teacher -> (auto-labels) -> the auto-labelled stages: two training stages wait
        assert prio["mapillary_pretrain" + suffix] == 2
        assert prio["cityscapes_teacher" + suffix] == 1 and prio["autolabel" + suffix] == 1
        for leaf in ("table2_avgpool_coarse", "table2_attention_autolabel", "table1_explicit"):
            assert prio[leaf + suffix] == 0
    assert prio["cityscapes_student"] == 0 and "cityscapes_student_seed1" not in prio
    assert not set(prio) & set(expand_seeds(cfg)["evaluate"])  # evaluations keep Snakemake's default

def test_dry_run_has_one_rule_instance_per_seed(tmp_path: Path) -> None:
    cfg = copy.deepcopy(EMBEDDED)
    cfg["seeds"] = [0, 1]
    cfg["train"]["cityscapes_student"]["per_seed"] = False
    two = tmp_path / "two-seeds.yaml"
    two.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n",
                          "--directory", str(tmp_path), "--configfile", str(two), "--quiet", "rules"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    planned = out.stdout + out.stderr
    for stage in ("cityscapes_teacher_seed1", "autolabel_seed1", "table2_attention_autolabel_seed1",
                  "evaluate_table1_explicit_seed1", "mapillary_pretrain_seed1"):
        assert stage in planned
    assert "cityscapes_student_seed1" not in planned and "cityscapes_student" in planned


def test_seed_copies_ask_for_their_stage_resources() -> None:
    from hmsa.orchestration.cluster import load_cluster

    cluster = load_cluster(ROOT / "configs/cluster/slurm.yaml")
    assert cluster.resources("table1_single_seed2", "train")["nodes"] == 4  # Mapillary: 4 nodes
    assert cluster.resources("cityscapes_teacher_seed1", "train")["nodes"] == 2
    assert cluster.resources("mapillary_attention", "train")["nodes"] == 4


def test_three_seed_config_is_the_embedded_one_with_seeds() -> None:
    """configs/pipeline/embedded-3seeds.yaml may differ from the default only in its seeds, its own
    output folders and experiment, and which stages are trained once."""
    three = yaml.safe_load((ROOT / "configs/pipeline/embedded-3seeds.yaml").read_text())
    check(three, SCHEMA, ["embedded-3seeds.yaml"])
    assert three["seeds"] == [0, 1, 2] and EMBEDDED.get("seeds", [0]) == [0]
    for key in ("results", "runs", "reports"):
        assert three[key] != EMBEDDED[key]
    for name, st in three["train"].items():
        st.pop("per_seed", None)
        assert st == EMBEDDED["train"][name]
    same = ("cluster", "data", "versioning", "autolabel", "evaluate", "tables")
    assert {k: three[k] for k in same} == {k: EMBEDDED[k] for k in same}
    assert set(three["train"]) == set(EMBEDDED["train"])


def test_each_pipeline_config_writes_under_its_own_folders() -> None:
    """Two configs run in one checkout never overwrite each other; the default keeps the paths the README
    and users know."""
    configs = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs/pipeline").glob("*.yaml"))}
    assert {"embedded.yaml", "paper.yaml", "embedded-3seeds.yaml"} <= set(configs)
    assert {k: EMBEDDED.get(k, "logs") for k in ("results", "runs", "reports", "logs")} == {
        "results": "results", "runs": "runs", "reports": "reports", "logs": "logs"}
    for key in ("results", "runs", "reports", "logs"):
        dirs = {name: Path(c.get(key, "logs")) for name, c in configs.items()}
        for a, da in dirs.items():
            for b, db in dirs.items():
                if a == b:
                    continue
                assert da != db, f"{a} and {b} share {key}: {da}"
                # the default's folder may hold another config's folder, never the same stage folders
                if db.is_relative_to(da):
                    assert db.relative_to(da).parts[0] == configs[b]["name"], (key, a, b)
    paper = configs["paper.yaml"]
    assert paper["results"] == "results/paper" and paper["reports"] == "reports/paper"
    header = (ROOT / "configs/pipeline/paper.yaml").read_text().split("\nname:", 1)[0]
    assert "paper's recipe" in header and "SLURM" in header and "embedded" not in header.lower()


def test_run_summary_reads_the_tables_headline_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's last lines: each table row's mIoU (mean ± std over seeds), 'not run' for a row whose
    evaluation is missing, where the report and the MLflow UI are."""
    import json

    from hmsa.orchestration.pipeline import expand_seeds
    from hmsa.reporting.run_summary import summary

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = copy.deepcopy(EMBEDDED)
    cfg["seeds"] = [0, 1]
    pipeline = expand_seeds(cfg)
    for name, miou in (("evaluate_table2_avgpool_coarse", 0.40), ("evaluate_table2_avgpool_coarse_seed1", 0.50)):
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "metrics.json").write_text(json.dumps(
            {"settings": {"avgpool_0.5-1-2_flip": {"miou": miou}}}))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/README.md").write_text("# index\n")
    text = summary(pipeline, "results", "reports")
    row = next(line for line in text.splitlines() if "table2_avgpool_coarse · avgpool:0.5,1,2:flip" in line)
    assert row.split()[0] == "table2" and "45.00 ± 7.07 (2 seeds)" in row
    assert sum("not run" in line for line in text.splitlines()) == sum(
        len(v) if isinstance(v, list) else 1 for v in cfg["tables"].values()) - 1
    assert "Reports: reports/README.md" in text
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in text and "hmsa-embedded" in text
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://login1:5000")
    assert "MLflow:  http://login1:5000" in summary(pipeline, "results", "reports")


def test_a_stage_depends_on_every_file_its_experiment_extends(tmp_path: Path) -> None:
    """Editing a shared base (e.g. cityscapes_base.yaml) must re-run the stages built on it: the whole
    `extends` chain is an input of each stage, not only the file the pipeline config names."""
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n",
                          "--directory", str(tmp_path), "--configfile", str(ROOT / "configs/pipeline/embedded.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = {}  # rule name -> its `input:` line in the dry run
    for block in (out.stdout + out.stderr).split("\nrule ")[1:]:
        inputs = [line for line in block.splitlines() if line.strip().startswith("input:")]
        jobs[block.split(":")[0]] = inputs[0] if inputs else ""
    for rule in ("cityscapes_teacher", "autolabel", "evaluate_table2_attention_coarse", "table1_single"):
        assert "configs/experiments/embedded/base.yaml" in jobs[rule], (rule, jobs[rule])
    for rule in ("cityscapes_teacher", "autolabel", "evaluate_table2_attention_coarse"):
        assert "configs/experiments/embedded/cityscapes_base.yaml" in jobs[rule], (rule, jobs[rule])


def test_config_files_follow_the_extends_chain(tmp_path: Path) -> None:
    from hmsa.config import ConfigError, config_files, load

    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("train: {iterations: 7, lr: 0.5}\n")
    (tmp_path / "sub/mid.yaml").write_text("extends: ../base.yaml\ntrain: {iterations: 9}\n")
    (tmp_path / "sub/leaf.yaml").write_text("extends: mid.yaml\nseed: 3\n")
    files = config_files(tmp_path / "sub/leaf.yaml")
    assert files == [tmp_path / "sub/leaf.yaml", tmp_path / "sub/mid.yaml", tmp_path / "base.yaml"]
    cfg = load(tmp_path / "sub/leaf.yaml")  # the nearest file wins
    assert (cfg.seed, cfg.train.iterations, cfg.train.lr) == (3, 9, 0.5)
    (tmp_path / "base.yaml").write_text("extends: sub/leaf.yaml\n")
    with pytest.raises(ConfigError, match="'extends' cycle"):
        config_files(tmp_path / "sub/leaf.yaml")
