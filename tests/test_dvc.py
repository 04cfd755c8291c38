"""DVC versions of stage outputs (hmsa/orchestration/versioning.py), with the real git and dvc binaries.

The round trip runs the project's own Snakefile, rules and configs (copied into a temporary git
repository with a local DVC remote) on a tiny DAG: the stages record their outputs, the .dvc files
are committed, a fresh `git clone` + `hmsa version pull` restores them, and `snakemake -n` then has
nothing to do for the stages that made them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hmsa.cli import main
from hmsa.orchestration import versioning
from hmsa.orchestration.dvc_outputs import write_dvc_metrics
from hmsa.reporting.compare import setting_of

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _git_repo(path: Path, remote: Path) -> Path:
    """A git repository with the project's DVC setup (.dvc/config, .dvcignore), its default remote
    pointed at ``remote`` the way a user would (`dvc remote modify`)."""
    path.mkdir(parents=True, exist_ok=True)
    _run(["git", "init", "-q", "-b", "main"], path)
    _run(["git", "config", "user.email", "test@example.com"], path)
    _run(["git", "config", "user.name", "test"], path)
    (path / ".dvc").mkdir()
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, path / name)
    _run([str(BIN / "dvc"), "remote", "modify", "storage", "url", str(remote)], path)
    return path


def _commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", message], repo)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_outside_a_git_dvc_checkout_is_a_logged_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"weights")
    caplog.set_level("INFO", logger="hmsa.versioning")
    assert main(["version", "add", "model.pt"]) == 0
    assert "not versioned" in caplog.text and "not a DVC repository" in caplog.text
    assert not (tmp_path / "versions").exists()
    # .dvc/ without git (e.g. an unpacked tarball): still a no-op, .dvc files could not be committed.
    (tmp_path / ".dvc").mkdir()
    assert versioning.record([Path("model.pt")]) == []
    assert "not a git checkout" in caplog.text
    assert versioning.data_version(Path("model.pt")) == ""


def test_missing_output_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["version", "add", "results/x/model.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "results/x/model.pt: not found" in err


def test_record_push_and_data_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = tmp_path / "remote"
    repo = _git_repo(tmp_path / "repo", remote)
    monkeypatch.chdir(repo)
    model = repo / "results/stage/model.pt"  # git-ignored, like every output of the DAG
    model.parent.mkdir(parents=True)
    model.write_bytes(b"final weights")
    labels = repo / "runs/autolabel/labels"
    labels.mkdir(parents=True)
    for i in range(3):
        (labels / f"img{i}.png").write_bytes(bytes([i]) * 10)
    before = model.stat().st_mtime_ns
    assert main(["version", "add", "--mode", "record", "results/stage/model.pt", "runs/autolabel/labels"]) == 0

    dvcfile = repo / "versions/results/stage/model.pt.dvc"
    spec = yaml.safe_load(dvcfile.read_text())
    assert spec["outs"][0]["path"] == "results/stage/model.pt"
    assert (dvcfile.parent / spec["wdir"]).resolve() == repo.resolve()
    assert versioning.data_version(model) == _md5(model)
    assert versioning.data_version(Path("runs/autolabel/labels")).endswith(".dir")
    assert versioning.data_version(Path("results/other.json")) == ""
    assert model.stat().st_mtime_ns == before, "recording must not touch the stage's output"
    assert not remote.exists(), "--mode record must not push"
    # The .dvc files are committable: outside every git-ignored folder.
    ignored = subprocess.run(["git", "check-ignore", "-q", str(dvcfile)], cwd=repo)
    assert ignored.returncode == 1, "the .dvc file would not be committed"

    model.write_bytes(b"retrained weights")
    assert main(["version", "add", "results/stage/model.pt"]) == 0  # default mode: push
    assert versioning.data_version(model) == _md5(model)
    assert (remote / "files/md5" / _md5(model)[:2] / _md5(model)[2:]).is_file()


def test_concurrent_records_wait_for_each_other(tmp_path: Path) -> None:
    repo = _git_repo(tmp_path / "repo", tmp_path / "remote")
    names = ["a", "b", "c"]
    for n in names:
        (repo / "results" / n).mkdir(parents=True)
        (repo / "results" / n / "model.pt").write_text(n)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    procs = [subprocess.Popen([str(BIN / "hmsa"), "version", "add", f"results/{n}/model.pt"], cwd=repo,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in names]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    for n in names:
        path = repo / "results" / n / "model.pt"
        assert versioning.data_version(path) == _md5(path)


def test_pull_restamps_in_the_order_outputs_were_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC checks files out in its own order; Snakemake would then see a downstream output older
    than its input. Made first, named last (and vice versa), so checkout order alone cannot pass."""
    repo = _git_repo(tmp_path / "repo", tmp_path / "remote")
    monkeypatch.chdir(repo)
    order = ["results/z_upstream/out.json", "results/m_middle/out.json", "results/a_downstream/out.json"]
    for i, rel in enumerate(order):
        (repo / rel).parent.mkdir(parents=True)
        (repo / rel).write_text(str(i))
        os.utime(repo / rel, ns=(1_000_000_000 * (i + 1),) * 2)
    assert versioning.record([Path(p) for p in order], push=True)
    (repo / "config.yaml").write_text("tracked by git\n")
    _commit(repo, "outputs")

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    time.sleep(0.05)
    monkeypatch.chdir(clone)
    restored = versioning.pull()
    assert sorted(str(p.relative_to(clone)) for p in restored) == sorted(order)
    mtimes = [(clone / rel).stat().st_mtime_ns for rel in order]
    assert mtimes == sorted(mtimes) and len(set(mtimes)) == len(mtimes)
    assert mtimes[0] >= (clone / "config.yaml").stat().st_mtime_ns
    assert [(clone / rel).read_text() for rel in order] == ["0", "1", "2"]
    assert versioning.pull() == [], "a second pull restores (and re-stamps) nothing"


# --- the round trip through the project's own DAG ------------------------------------------------

def _tiny_project(repo: Path) -> Path:
    """The project's Snakefile, rules, schema and configs, with a pipeline of the stages that DVC
    versions (data, two training stages, auto-labelling) and one evaluation, at toy size."""
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "workflows", repo / "workflows", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    shutil.copytree(ROOT / "configs", repo / "configs")
    cfg = yaml.safe_load((ROOT / "configs/pipeline/embedded.yaml").read_text())
    cfg["train"] = {k: cfg["train"][k] for k in ("mapillary_pretrain", "mapillary_attention", "cityscapes_teacher")}
    cfg["evaluate"] = {"evaluate_mapillary": cfg["evaluate"]["evaluate_mapillary"]}
    cfg["tables"] = {"table4": cfg["tables"]["table4"]}
    cfg["data"]["synth"] = {"cityscapes": {"train": 2, "val": 2, "train_extra": 2},
                            "mapillary": {"training": 2, "validation": 2}, "size": "64x128"}
    (repo / "configs/experiments/tiny").mkdir()
    for section in ("train", "autolabel"):
        for name, stage in cfg[section].items():
            tiny = {"extends": f"../embedded/{Path(stage['experiment']).name}",
                    "data": {"crop": [32, 64], "max_images": 2}, "eval": {"max_images": 2, "save_maps": 0}}
            if section == "train":
                tiny["train"] = {"iterations": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1}
            stage["experiment"] = f"configs/experiments/tiny/{name}.yaml"
            (repo / stage["experiment"]).write_text(yaml.safe_dump(tiny))
    (repo / "configs/pipeline/tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return repo / "configs/pipeline/tiny.yaml"


VERSIONED = ["data/embedded", "results/prepare_cityscapes/manifest.json", "results/prepare_mapillary/manifest.json",
             "results/mapillary_pretrain/model.pt", "results/mapillary_pretrain/train.json",
             "results/mapillary_pretrain/curves.csv",
             "results/mapillary_attention/model.pt", "results/mapillary_attention/train.json",
             "results/mapillary_attention/curves.csv",
             "results/cityscapes_teacher/model.pt", "results/cityscapes_teacher/train.json",
             "results/cityscapes_teacher/curves.csv",
             "runs/autolabel/labels", "results/autolabel/manifest.json",
             "results/evaluate_mapillary/metrics.json", "results/evaluate_mapillary/per_class.csv",
             "results/evaluate_mapillary/dvc_metrics.json", "results/per_class/table4.csv"]
STAGES = {"embedded_data", "prepare_cityscapes", "prepare_mapillary", "mapillary_pretrain", "mapillary_attention",
          "cityscapes_teacher", "autolabel", "evaluate_mapillary", "per_class_plots"}
TARGETS = ["results/autolabel/manifest.json", "results/evaluate_mapillary/metrics.json",
           "results/per_class/table4.csv"]


def _snakemake(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # Targets first: --configfile takes every word after it.
    return _run([str(BIN / "snakemake"), *args, "--profile", "workflows/profiles/default",
                 "--configfile", "configs/pipeline/tiny.yaml"], repo, timeout=1500, HMSA_TRACKING="0")


def _planned(dry_run: subprocess.CompletedProcess) -> set[str]:
    """Rule names in the job table of `snakemake -n`."""
    text = dry_run.stdout + dry_run.stderr
    if "Nothing to be done" in text:
        return set()
    rules = set()
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:  # skip the header and its rule
        words = line.split()
        if not words or words[0] == "total":
            break
        rules.add(words[0])
    return rules


@pytest.mark.slow
def test_round_trip_push_clone_pull_nothing_to_do(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    repo = _git_repo(tmp_path / "origin", remote)
    _tiny_project(repo)
    _snakemake(repo, *TARGETS)
    for rel in VERSIONED:
        assert versioning.data_version(repo / rel), f"{rel} was not versioned by its stage"
    assert not list((repo / "versions/runs").rglob("checkpoints*")), "checkpoints are not versioned"
    _commit(repo, "tiny pipeline and its versions")
    assert not subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                              text=True).stdout.strip(), "every .dvc file is committable"

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "results").exists() and not (clone / ".snakemake").exists()
    _run([str(BIN / "hmsa"), "version", "pull"], clone)
    for rel in VERSIONED:
        assert versioning.data_version(clone / rel) == versioning.data_version(repo / rel)
    model = "results/cityscapes_teacher/model.pt"
    assert _md5(clone / model) == _md5(repo / model)

    assert _planned(_snakemake(clone, "-n", *TARGETS)) == set()
    whole = _planned(_snakemake(clone, "-n"))
    assert whole and not whole & STAGES, f"restored stages planned again: {whole & STAGES}"
    # The check can fail: an input newer than a restored output makes its stage and dependants run.
    os.utime(clone / "configs/experiments/tiny/cityscapes_teacher.yaml")
    assert _planned(_snakemake(clone, "-n", *TARGETS)) == {"cityscapes_teacher", "autolabel"}

    _diffs_between_commits(repo)


def _diffs_between_commits(repo: Path) -> None:
    """dvc.yaml's metrics / params / plots compare two commits: the git-ignored metrics files are
    read from each commit's DVC-tracked copy (removed from the workspace to prove it)."""
    metrics = repo / "results/evaluate_mapillary/dvc_metrics.json"
    before = json.loads(metrics.read_text())
    (setting,) = before
    metrics.write_text(json.dumps({setting: {"miou": before[setting]["miou"] + 7}}))
    per_class = repo / "results/per_class/table4.csv"
    rows = per_class.read_text().splitlines()
    first = rows[1].split(",")[0]
    per_class.write_text("\n".join([rows[0], rows[1].rsplit(",", 1)[0] + ",12.34", *rows[2:]]) + "\n")
    _run([str(BIN / "hmsa"), "version", "add", str(metrics), str(per_class)], repo)
    params = repo / "configs/experiments/embedded/mapillary_pretrain.yaml"
    params.write_text(params.read_text() + "seed: 123\n")
    _commit(repo, "retrained")
    metrics.unlink()
    per_class.unlink()
    dvc = str(BIN / "dvc")
    m = json.loads(_run([dvc, "metrics", "diff", "HEAD~1", "HEAD", "--json"], repo).stdout)
    assert m["results/evaluate_mapillary/dvc_metrics.json"][f"{setting}.miou"]["diff"] == pytest.approx(7)
    p = json.loads(_run([dvc, "params", "diff", "HEAD~1", "HEAD", "--json"], repo).stdout)
    assert p["configs/experiments/embedded/mapillary_pretrain.yaml"]["seed"]["new"] == 123
    plots = json.loads(_run([dvc, "plots", "diff", "HEAD~1", "HEAD", "--json"], repo).stdout)["data"]
    values = plots["table4_per_class_iou"][0]["content"]["data"]["values"]
    assert {(v["rev"], v["class"]) for v in values} >= {("HEAD~1", first), ("HEAD", first)}
    assert {v["rev"]: v for v in values if v["class"] == first}["HEAD"]["iou"] == "12.34"


# --- what `dvc metrics` and `dvc plots` show -------------------------------------------------------

CLASSES = {"cityscapes": ["road", "sidewalk", "building"], "mapillary": [f"Class {i}" for i in range(66)]}


def _fake_results(results: Path, pipeline: dict, seed: int) -> dict[str, dict]:
    """metrics.json of every evaluation of ``pipeline`` (what `hmsa evaluate` writes), random IoUs."""
    from hmsa.evaluation.settings import parse_setting

    rng = np.random.default_rng(seed)
    out = {}
    for name, ev in pipeline["evaluate"].items():
        settings = {}
        for spec in ev["settings"]:
            s = parse_setting(spec)
            per_class = {c: float(rng.uniform(0, 1)) for c in CLASSES[ev["dataset"]]}
            per_class[CLASSES[ev["dataset"]][-1]] = None  # a class absent from the split
            valid = [v for v in per_class.values() if v is not None]
            settings[s.name] = {"method": s.method, "scales": list(s.scales), "flip": s.flip,
                                "miou": sum(valid) / len(valid), "pixel_accuracy": 0.9, "per_class": per_class}
        metrics = {"dataset": ev["dataset"], "split": "val", "images": 2, "model": f"results/{ev['model']}/model.pt",
                   "mlflow_run_id": "0" * 32, "settings": settings}
        (results / name).mkdir(parents=True, exist_ok=True)
        (results / name / "metrics.json").write_text(json.dumps(metrics))
        write_dvc_metrics(results / name / "dvc_metrics.json", metrics)
        out[name] = metrics
    return out


def test_metrics_and_plots_read_by_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc metrics show` has one column per setting (mIoU in %), nothing else; `dvc metrics diff` and
    `dvc plots diff` compare two commits; one per-class plot per table; dvc_plots/ is git-ignored."""
    repo = _git_repo(tmp_path / "repo", tmp_path / "remote")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "workflows/dvc", repo / "workflows/dvc")
    monkeypatch.chdir(repo)
    pipeline_file = ROOT / "configs/pipeline/embedded.yaml"
    pipeline = yaml.safe_load(pipeline_file.read_text())
    first = _fake_results(repo / "results", pipeline, seed=0)
    for stage in pipeline["train"]:  # the training curves plot reads these
        (repo / "results" / stage).mkdir(parents=True, exist_ok=True)
        (repo / "results" / stage / "curves.csv").write_text("step,loss,lr\n1,2.5,0.01\n2,2.0,0.01\n")
    assert main(["plots", "--pipeline-config", str(pipeline_file), "--results", "results",
                 "--out-dir", "results/per_class"]) == 0
    tracked = sorted(str(p.relative_to(repo)) for p in (repo / "results").rglob("*")
                     if p.name in ("dvc_metrics.json", "curves.csv") or p.parent.name == "per_class")
    assert main(["version", "add", "--mode", "record", *tracked]) == 0
    _commit(repo, "first")
    dvc = str(BIN / "dvc")

    shown = json.loads(_run([dvc, "metrics", "show", "--json"], repo).stdout)
    files = shown[""]["data"]
    assert set(files) == {f"results/{e}/dvc_metrics.json" for e in pipeline["evaluate"]}
    for name, ev in pipeline["evaluate"].items():
        data = files[f"results/{name}/dvc_metrics.json"]["data"]
        assert set(data) == set(ev["settings"])  # the config's spelling, one key per setting
        for spec, value in data.items():
            expected = first[name]["settings"][setting_of(spec).name]["miou"]
            assert value == {"miou": pytest.approx(round(100 * expected, 2))}
    table = _run([dvc, "metrics", "show"], repo).stdout.splitlines()
    settings = {s for ev in pipeline["evaluate"].values() for s in ev["settings"]}
    assert table[0].split()[1:] == sorted(f"{s}.miou" for s in settings)  # Path + one column per setting

    # a second commit: one evaluation better by 5 points, the per-class files rewritten
    name = "evaluate_table2_attention_coarse"
    setting = pipeline["evaluate"][name]["settings"][0]  # its other settings stay as they were
    metrics_file = repo / f"results/{name}/dvc_metrics.json"
    before = json.loads(metrics_file.read_text())
    old = before[setting]["miou"]
    metrics_file.write_text(json.dumps({**before, setting: {"miou": old + 5}}))
    assert main(["version", "add", "--mode", "record", str(metrics_file.relative_to(repo))]) == 0
    _commit(repo, "second")
    metrics_file.unlink()  # read from each commit's DVC copy
    diff = json.loads(_run([dvc, "metrics", "diff", "HEAD~1", "HEAD", "--json"], repo).stdout)
    assert diff == {f"results/{name}/dvc_metrics.json": {f"{setting}.miou": {
        "old": old, "new": old + 5, "diff": pytest.approx(5)}}}

    plots = json.loads(_run([dvc, "plots", "diff", "HEAD~1", "HEAD", "--json"], repo).stdout)["data"]
    assert sorted(plots) == sorted([f"{t}_per_class_iou" for t in pipeline["tables"]] + ["training_loss"])
    values = plots["table1_per_class_iou"][0]["content"]["data"]["values"]
    rows = {v["row"] for v in values}
    assert len(rows) == len(pipeline["tables"]["table1"]) and "table1_single · avgpool:0.5,1,2" in rows
    assert {v["rev"] for v in values} == {"HEAD~1", "HEAD"}
    assert len(values) == 2 * len(rows) * 66  # every Mapillary class of every row, per revision
    _run([dvc, "plots", "show"], repo)
    assert (repo / "dvc_plots/index.html").is_file()
    assert subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=repo).returncode == 0
