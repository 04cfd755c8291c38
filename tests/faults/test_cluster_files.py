"""Cluster files (configs/cluster/*.yaml) that are broken or mistyped (issue #15): refused by `hmsa
submit` in one line naming the file and key before any job is submitted, and by `snakemake -n` at
DAG build, checked together with the pipeline config (a misspelt stage name under `stages`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.cases import ROOT, Case, check

# The stage a case submits is cheap and succeeds, so a checkout that accepts the file shows "accepted".
STAGE = ["--", "data", "synth", "--out", "{tmp}/synth", "--cityscapes", "train=1", "--mapillary", "training=1",
         "--size", "16x32"]


def _writes(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "cluster.yaml").write_text(text)
    return setup


def _case(name: str, text: str, key: str) -> Case:
    return Case(name, ["submit", "--stage", "demo", "--kind", "prepare", "--run-dir", "{tmp}/run",
                       "--cluster", "{tmp}/cluster.yaml", *STAGE],
                names=key, setup=_writes(text), unfinished=("{tmp}/run/job.json", "{tmp}/synth"))


CASES = [
    _case("a cluster file that is not YAML", "executor: local\ndefaults: {timeout_min: 5\n", "cluster.yaml"),
    _case("a cluster file that is a list", "- executor\n- local\n", "cluster.yaml"),
    _case("a cluster file that is a string", "local\n", "cluster.yaml"),
    _case("a misspelt resource key", "executor: local\ndefaults: {timeout_mins: 5}\n", "defaults.timeout_mins"),
    _case("a misspelt top-level key", "executor: local\ndefualts: {timeout_min: 5}\n", "defualts"),
    _case("a misspelt executor", "executor: slrum\n", "executor"),
    _case("a negative time limit", "executor: local\ndefaults: {timeout_min: -5}\n", "defaults.timeout_min"),
    _case("a time limit of zero", "executor: local\ndefaults: {timeout_min: 0}\n", "defaults.timeout_min"),
    _case("zero nodes", "executor: local\nkinds: {prepare: {nodes: 0}}\n", "kinds.prepare.nodes"),
    _case("a boolean where a number goes", "executor: local\ndefaults: {cpus_per_task: true}\n",
          "defaults.cpus_per_task"),
    _case("a misspelt kind", "executor: local\nkinds: {prepaer: {timeout_min: 5}}\n", "kinds.prepaer"),
    _case("stages as a list", "executor: local\nstages: [demo]\n", "stages"),
    _case("a misspelt key under a stage", "executor: local\nstages: {demo: {gpus: 1}}\n", "stages.demo.gpus"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)


@pytest.mark.parametrize("text,key", [
    ("executor: local\nstages: {cityscapes_teachr: {timeout_min: 5}}\n", "stages.cityscapes_teachr"),
    ("executor: local\ndefaults: {timeout_min: -5}\n", "defaults.timeout_min"),
    ("[1, 2]\n", "top level"),
])
def test_snakemake_dry_run_refuses_a_bad_cluster_file(text: str, key: str, tmp_path: Path) -> None:
    """Checked with the pipeline config at DAG build: `snakemake -n` fails naming the file and key."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(text)
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n",
                          "--directory", str(tmp_path), "--config", f"cluster={cluster}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if str(cluster) in line]
    assert len(lines) == 1 and key in lines[0], out.stdout + out.stderr


def test_per_seed_copies_of_a_stage_are_known(tmp_path: Path) -> None:
    from hmsa.orchestration.cluster import ClusterConfigError, load_cluster

    cluster = tmp_path / "c.yaml"
    cluster.write_text("executor: local\nstages: {teacher: {timeout_min: 5}, teacher_seed2: {timeout_min: 6}}\n")
    assert load_cluster(cluster, ["teacher"]).resources("teacher_seed2", "train")["timeout_min"] == 6
    cluster.write_text("executor: local\nstages: {teachr: {timeout_min: 5}}\n")
    with pytest.raises(ClusterConfigError, match="'stages.teachr'"):
        load_cluster(cluster, ["teacher"])
