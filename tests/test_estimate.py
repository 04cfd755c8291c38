"""`hmsa estimate` on the paper's config: positive, finite figures for every stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from hmsa.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/pipeline/paper.yaml"


def _stages() -> list[str]:
    cfg = yaml.safe_load(PAPER.read_text())
    return [*cfg["train"], *cfg["autolabel"], *cfg["evaluate"]]


def _check(result: dict) -> None:
    assert [r["stage"] for r in result["stages"]] == _stages()
    for r in result["stages"]:
        for key in ("seconds_per_unit", "wall_hours", "gpu_hours"):
            assert r[key] > 0 and math.isfinite(r[key]), (r["stage"], key)
        assert r["gpu_hours"] == pytest.approx(r["wall_hours"] * r["gpus"])
    assert result["total"]["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in result["stages"]))


def test_declared_times(tmp_path: Path) -> None:
    args = ["estimate", "--configfile", str(PAPER), "--out", str(tmp_path / "e.json")]
    for stage in _stages():
        args += ["--declare", f"{stage}=0.8"]
    assert main(args) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    _check(result)
    teacher = next(r for r in result["stages"] if r["stage"] == "cityscapes_teacher")
    assert teacher["gpus"] == 16 and teacher["units"] == 32539  # 2 nodes x 8 GPUs, 175 epochs


def test_no_time_source_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["estimate", "--configfile", str(PAPER)]) == 2
    assert "--measure or --declare" in capsys.readouterr().err


@pytest.mark.slow
def test_measured_on_this_machine(tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    assert main(["estimate", "--configfile", str(PAPER), "--measure", "--measure-scale", "0.04",
                 "--steps", "1", "--out", str(out)]) == 0
    _check(json.loads(out.read_text()))
