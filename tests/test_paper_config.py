"""The paper's recipe (configs/pipeline/paper.yaml) as far as it can be proven without GPUs or data:
the dry run lists every stage with its SLURM resources, and the paper-size models run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hmsa import config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/pipeline/paper.yaml"


def _stages() -> list[str]:
    cfg = yaml.safe_load(PAPER.read_text())
    return [*cfg["train"], *cfg["autolabel"], *cfg["evaluate"], "prepare_cityscapes", "prepare_mapillary"]


def test_dry_run_lists_every_stage_with_slurm_resources(tmp_path: Path) -> None:
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n",
           "--directory", str(tmp_path), "--configfile", str(PAPER), "--profile",
           str(ROOT / "workflows/profiles/slurm")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    cluster = yaml.safe_load((ROOT / "configs/cluster/slurm.yaml").read_text())
    for stage in _stages():
        block = re.search(rf"rule {stage}:\n(.*?)\n\n", text, re.S)
        assert block, f"{stage} missing from the dry run"
        res = re.search(r"resources: (.*)", block.group(1)).group(1)
        assert "slurm_partition=gpu" in res and "runtime=" in res
        if not stage.startswith("prepare"):
            assert int(re.search(r"gpus=(\d+)", res).group(1)) >= 8
    assert "gpus=32" in text  # Mapillary on 4 nodes x 8 GPUs (section 5.1)
    assert cluster["executor"] == "slurm"


def _models() -> list[tuple[str, bool, int]]:
    cfg = yaml.safe_load(PAPER.read_text())
    seen = set()
    for stage in cfg["train"].values():
        c = config.load(ROOT / stage["experiment"])
        classes = 19 if c.data.dataset == "cityscapes" else 65
        seen.add((c.model.name, c.model.attention, classes))
    return sorted(seen)


@pytest.mark.slow
@pytest.mark.parametrize("name,attention,classes", _models())
def test_paper_size_models_run(name: str, attention: bool, classes: int) -> None:
    from hmsa.models import build_model
    from hmsa.models.multiscale import forward_train

    model = build_model(name, classes, attention=attention)  # pretrained weights need network: off here
    method = "hierarchical" if attention else "single"
    out = forward_train(model, torch.randn(2, 3, 64, 128), method, [0.5, 1.0])
    assert out["fused"].shape == (2, classes, 64, 128)
    out["fused"].mean().backward()
