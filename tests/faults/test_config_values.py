"""Config values that make no sense (issue #15): each refused up front by the schema (hmsa/config.py),
in one line naming the key, before a run dir, a checkpoint or a model file is written. The command
is a real one-iteration training, so on a checkout that accepts the value the runner sees it pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.cases import TINY, Case, check

UNFINISHED = ("{tmp}/model.pt", "{tmp}/run/config.yaml", "{tmp}/run/checkpoints")


def _train(name: str, override: str, key: str) -> Case:
    return Case(name, ["train", "--config", str(TINY), "--run-dir", "{tmp}/run", "--out-model", "{tmp}/model.pt",
                       "data.root={data}/cityscapes", "train.iterations=1", override],
                names=key, unfinished=UNFINISHED)


CASES = [
    _train("a learning rate of zero", "train.lr=0", "train.lr"),
    _train("a NaN learning rate", "train.lr=.nan", "train.lr"),
    _train("a negative learning rate", "train.lr=-0.01", "train.lr"),
    _train("a negative poly power", "train.poly_power=-1", "train.poly_power"),
    _train("negative warm-up iterations", "train.warmup_iterations=-5", "train.warmup_iterations"),
    _train("a negative auxiliary loss weight", "train.aux_weight=-5", "train.aux_weight"),
    _train("a negative momentum", "train.momentum=-0.9", "train.momentum"),
    _train("a negative weight decay", "train.weight_decay=-1e-4", "train.weight_decay"),
    _train("a checkpoint every -1 iterations", "train.checkpoint_every=-1", "train.checkpoint_every"),
    _train("a checkpoint every 0 iterations", "train.checkpoint_every=0", "train.checkpoint_every"),
    _train("a log line every 0 iterations", "train.log_every=0", "train.log_every"),
    _train("a negative seed", "seed=-1", "seed"),
    _train("negative data-loader workers", "data.num_workers=-1", "data.num_workers"),
    _train("a negative image cap", "data.max_images=-3", "data.max_images"),
    _train("a negative colour jitter", "data.color_jitter=-1", "data.color_jitter"),
    _train("a scale range below zero", "data.scale_range=[-1,-0.5]", "data.scale_range"),
    _train("a scale range upside down", "data.scale_range=[2.0,0.5]", "data.scale_range"),
    _train("a scale range of one value", "data.scale_range=[1.0]", "data.scale_range"),
    _train("training scales without 1.0", "train.scales=[0.5,2.0]", "train.scales"),
    _train("an infinite training scale", "train.scales=[0.5,.inf]", "train.scales"),
    _train("a NaN evaluation scale", "eval.scales=[1.0,.nan]", "eval.scales"),
    _train("repeated evaluation scales", "eval.scales=[1,1,1,1]", "eval.scales"),
    _train("a split the dataset does not have", "eval.split=vall", "eval.split"),
    _train("an unknown model", "model.name=hrnet_ocr_tiyn", "model.name"),
]


def _model(tmp: Path) -> None:
    """A tiny untrained Cityscapes model file (what `hmsa evaluate` would read)."""
    from hmsa.data.labels import CITYSCAPES_CLASSES
    from tests.test_evaluate import write_model

    write_model(tmp / "model.pt", len(CITYSCAPES_CLASSES), list(CITYSCAPES_CLASSES))


CASES += [
    Case("duplicate scales in an evaluation setting (single-scale under a four-scale name)",
         ["evaluate", "--config", str(TINY), "--model", "{tmp}/model.pt", "--out-dir", "{tmp}/ev",
          "--setting", "avgpool:1,1,1,1", "data.root={data}/cityscapes"],
         names="avgpool:1,1,1,1", setup=_model, unfinished=("{tmp}/ev/metrics.json",)),
    Case("an infinite scale in an evaluation setting",
         ["evaluate", "--config", str(TINY), "--model", "{tmp}/model.pt", "--out-dir", "{tmp}/ev",
          "--setting", "avgpool:1,inf", "data.root={data}/cityscapes"],
         names="avgpool:1,inf", setup=_model, unfinished=("{tmp}/ev/metrics.json",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)


def test_duplicate_scales_in_a_pipeline_config_name_the_key() -> None:
    import copy

    import yaml

    from hmsa.orchestration.pipeline import PipelineConfigError
    from hmsa.orchestration.pipeline import check as check_pipeline
    from tests.faults.cases import ROOT

    cfg = yaml.safe_load((ROOT / "configs/pipeline/embedded.yaml").read_text())
    bad = copy.deepcopy(cfg)
    bad["evaluate"]["evaluate_table1_single"]["settings"].append("avgpool:1,1,1,1")
    with pytest.raises(PipelineConfigError) as err:
        check_pipeline(bad, ROOT / "workflows/schemas/pipeline.schema.yaml", ["my.yaml"])
    assert "'evaluate.evaluate_table1_single.settings[" in str(err.value) and "\n" not in str(err.value)
