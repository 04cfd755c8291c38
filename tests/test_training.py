"""The training loop on the tiny config: it trains, checkpoints atomically, resumes bit-exactly after
an interruption, sets a stale run dir aside, and the evaluation counts every image once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hmsa import config
from hmsa.tracking import DEFAULT_EXPERIMENT
from hmsa.training import checkpoint, loop, precision
from hmsa.training import state as train_state

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/experiments/tiny.yaml"


def _cfg(data: Path, *extra: str) -> config.Config:
    return config.load(TINY, [f"data.root={data / 'cityscapes'}", *extra])


def test_train_writes_model_metrics_and_resolved_config(embedded_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = loop.run_training(_cfg(embedded_data), run, tmp_path / "model.pt", tmp_path / "train.json")
    assert result["iterations"] == 4
    weights, meta = checkpoint.load_model_file(tmp_path / "model.pt")
    assert meta["num_classes"] == 19 and meta["attention"] is True
    assert json.loads((tmp_path / "train.json").read_text())["iterations"] == 4
    assert config.load(run / "config.yaml") == _cfg(embedded_data)
    state = torch.load(checkpoint.last_path(run), weights_only=True)
    assert set(state) == set(train_state.KEYS)
    assert state["iteration"] == 4 and state["optimizer"]["state"]  # momentum buffers
    assert state["run_key"] == loop.run_key(_cfg(embedded_data)) and state["mlflow_run_id"] == result["mlflow_run_id"]
    assert state["scaler"] == {} and result["amp"] is False  # CPU: no gradient scaling
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    from mlflow.tracking import MlflowClient  # a standalone run is tracked and ended

    client = MlflowClient()
    (mlrun,) = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["train.iterations"] == "4"
    assert "loss/total" in mlrun.data.metrics


def test_resume_after_interruption_is_bit_exact(embedded_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(embedded_data)
    loop.run_training(cfg, tmp_path / "straight", tmp_path / "straight.pt")
    calls = {"n": 0}
    real = loop.total_loss

    def dies_at_iteration_3(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 4:  # after the checkpoint of iteration 2 (checkpoint_every: 2)
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "total_loss", dies_at_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        loop.run_training(cfg, tmp_path / "killed", tmp_path / "killed.pt")
    assert not (tmp_path / "killed.pt").exists()  # nothing that looks complete
    monkeypatch.setattr(loop, "total_loss", real)
    result = loop.run_training(cfg, tmp_path / "killed", tmp_path / "killed.pt")
    assert result["resumed_from"] == 2
    a, _ = checkpoint.load_model_file(tmp_path / "straight.pt")
    b, _ = checkpoint.load_model_file(tmp_path / "killed.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_curve_points_are_window_means_and_survive_a_resume(embedded_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each curves.csv point is the mean loss of the batches since the point before; a run killed
    between two points (checkpoint at 2, points at 4) logs the same curve as an unbroken one."""
    from hmsa.training import curves

    cfg = _cfg(embedded_data, "train.log_every=4")
    losses: list[float] = []
    real = loop.total_loss

    def recording(*args: object, **kwargs: object) -> object:
        loss, terms = real(*args, **kwargs)
        losses.append(terms["loss/total"])
        if len(losses) == 7:  # the killed run's 3rd iteration, after its checkpoint of iteration 2
            raise KeyboardInterrupt("simulated kill")
        return loss, terms

    monkeypatch.setattr(loop, "total_loss", recording)
    loop.run_training(cfg, tmp_path / "straight", tmp_path / "straight.pt", tmp_path / "s/train.json")
    straight = (tmp_path / "s" / curves.FILE).read_text().splitlines()
    assert straight[0] == "step,loss,lr" and len(straight) == 2
    assert float(straight[1].split(",")[1]) == pytest.approx(sum(losses[:4]) / 4, rel=1e-5)
    with pytest.raises(KeyboardInterrupt):
        loop.run_training(cfg, tmp_path / "killed", tmp_path / "killed.pt", tmp_path / "k/train.json")
    result = loop.run_training(cfg, tmp_path / "killed", tmp_path / "killed.pt", tmp_path / "k/train.json")
    assert result["resumed_from"] == 2
    assert (tmp_path / "k" / curves.FILE).read_text().splitlines() == straight


def test_changed_config_sets_the_old_run_aside(embedded_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    loop.run_training(_cfg(embedded_data), run)
    result = loop.run_training(_cfg(embedded_data, "train.lr=0.02"), run)
    assert result["resumed_from"] == 0
    assert list(run.glob("checkpoints.stale-*"))


def test_init_from_another_model_transfers_matching_tensors() -> None:
    from hmsa.models import build_model

    source = build_model("hrnet_ocr_tiny", 65, attention=False)  # like the Mapillary pre-training
    target = build_model("hrnet_ocr_tiny", 19, attention=True)
    skipped = checkpoint.load_matching(target, source.state_dict())
    assert any(k.startswith("attn_head.") for k in skipped)  # absent in the source
    assert "seg_head.6.weight" in skipped  # 65 vs 19 classes
    assert not any(k.startswith("trunk.") for k in skipped)
    assert torch.equal(target.trunk.body.conv1.weight, source.trunk.body.conv1.weight)


def test_evaluation_counts_every_image_once(embedded_data: Path, tmp_path: Path) -> None:
    from hmsa.evaluation.evaluate import run_evaluation
    from hmsa.evaluation.settings import parse_setting

    loop.run_training(_cfg(embedded_data), tmp_path / "run", tmp_path / "m.pt")
    settings = [parse_setting("hierarchical:0.25,0.5,1,2:flip"), parse_setting("maxpool:0.5,1")]
    m = run_evaluation("cityscapes", embedded_data / "cityscapes", "val", tmp_path / "m.pt", settings,
                       tmp_path / "eval", save_maps=1)
    assert m["images"] == 2
    for s in m["settings"].values():
        assert s["pixels"] > 0 and 0.0 <= s["miou"] <= 1.0
    assert (tmp_path / "eval/per_class.csv").read_text().startswith("class,hierarchical_0.25-0.5-1-2_flip")
    assert list((tmp_path / "eval/maps").glob("*.png"))


def test_autolabel_threshold_and_resume(embedded_data: Path, tmp_path: Path) -> None:
    from hmsa.autolabel import hard_labels, run_autolabel

    logits = torch.tensor([[[5.0, 0.0]], [[0.0, 0.1]]])  # 2 classes, 1x2 pixels
    assert hard_labels(logits, 0.9).tolist() == [[0, 255]]
    with pytest.raises(ValueError, match="threshold"):
        hard_labels(logits, 1.5)
    loop.run_training(_cfg(embedded_data), tmp_path / "run", tmp_path / "m.pt")
    kw = dict(root=embedded_data / "cityscapes", split="train_extra", model_path=tmp_path / "m.pt",
              out_dir=tmp_path / "labels", manifest_path=tmp_path / "manifest.json", threshold=0.0,
              method="hierarchical", scales=[0.5, 1.0], flip=False)
    first = run_autolabel(**kw)
    assert first["images"] == 3 and first["labelled_fraction_mean"] == 1.0  # threshold 0 labels all
    pngs = sorted((tmp_path / "labels/train_extra").rglob("*_gtCoarse_labelIds.png"))
    assert len(pngs) == 3
    ds_kw = {"labels": "autolabel", "label_root": tmp_path / "labels"}
    from hmsa.data import build_dataset

    assert len(build_dataset("cityscapes", embedded_data / "cityscapes", "train_extra", **ds_kw)) == 3
    stamp = pngs[0].stat().st_mtime_ns
    run_autolabel(**kw)  # resumable: finished images are not redone
    assert pngs[0].stat().st_mtime_ns == stamp


def test_training_with_rmi_loss(embedded_data: Path, tmp_path: Path) -> None:
    result = loop.run_training(_cfg(embedded_data, "train.loss=rmi", "train.iterations=2"), tmp_path / "r")
    assert result["iterations"] == 2
    state = torch.load(checkpoint.last_path(tmp_path / "r"), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _interrupted_then_resumed(cfg: config.Config, run: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Dies in iteration 3 (after the checkpoint of iteration 2), then resumes."""
    calls = {"n": 0}
    real = loop.total_loss

    def dies_at_iteration_3(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "total_loss", dies_at_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        loop.run_training(cfg, run, out)
    monkeypatch.setattr(loop, "total_loss", real)
    return loop.run_training(cfg, run, out)


def test_amp_sync_bn_and_workers_keep_resume_bit_exact_on_cpu(embedded_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """AMP and SyncBN are no-ops on CPU, and loader workers only load samples seeded per sample: an
    interrupted run with all three, resumed, ends with the plain run's weights bit for bit."""
    loop.run_training(_cfg(embedded_data), tmp_path / "plain", tmp_path / "plain.pt")
    cfg = _cfg(embedded_data, "train.amp=true", "train.sync_bn=true", "data.num_workers=2")
    result = _interrupted_then_resumed(cfg, tmp_path / "run", tmp_path / "run.pt", monkeypatch)
    assert result["resumed_from"] == 2 and result["amp"] is False and result["sync_bn"] is False
    a, _ = checkpoint.load_model_file(tmp_path / "plain.pt")
    b, _ = checkpoint.load_model_file(tmp_path / "run.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_amp_and_sync_bn_config_round_trip(tmp_path: Path) -> None:
    cfg = config.load(TINY, ["train.amp=true", "train.sync_bn=true"])
    assert cfg.train.amp and cfg.train.sync_bn and not config.load(TINY).train.amp  # default off
    config.dump(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg
    paper = config.load(ROOT / "configs/experiments/paper/base.yaml")
    assert paper.train.amp and paper.train.sync_bn
    with pytest.raises(config.ConfigError, match="train.amp"):
        config.load(TINY, ["train.amp=3"])


def test_sync_bn_conversion_and_cpu_no_op() -> None:
    from hmsa.models import build_model

    model = build_model("hrnet_ocr_tiny", 19, attention=True)
    keys = set(model.state_dict())
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    same, converted = precision.maybe_sync_bn(model, True, torch.device("cpu"), world_size=2)
    assert same is model and converted is False  # CPU: SyncBatchNorm cannot run, left as is
    synced = precision.convert_sync_bn(model)
    assert n_bn > 0 and sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == n_bn
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    assert set(synced.state_dict()) == keys  # checkpoints stay interchangeable


def test_precision_is_inert_on_cpu_and_scaler_state_round_trips() -> None:
    prec = precision.build_precision(True, torch.device("cpu"))
    assert prec.active is False and prec.state_dict() == {}
    prec.load_state_dict({})  # a CPU checkpoint resumed anywhere
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.5)
    with prec.autocast():
        loss = (w * 3).sum()
    assert loss.dtype == torch.float32
    prec.backward_step(loss, opt)
    assert torch.equal(w.detach(), torch.tensor([-0.5, -0.5]))  # a plain SGD step: 1 - 0.5 * 3


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    import random

    import numpy as np

    random.random(), np.random.randn(), torch.rand(1)
    checkpoint.save({"rng": train_state.rng_state()}, tmp_path / "r.pt")
    before = (random.random(), float(np.random.randn()), float(torch.rand(1)))
    train_state.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert (random.random(), float(np.random.randn()), float(torch.rand(1))) == before


def test_progress_bar_on_a_terminal(embedded_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import re
    import sys

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    loop.run_training(_cfg(embedded_data), tmp_path / "run")
    out = err.getvalue()
    assert re.search(r"4/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(it/s|s/it), loss=\d+\.\d+", out), out[-300:]


def test_curve_export_keeps_the_last_row_of_each_step(tmp_path: Path) -> None:
    """A resumed run logs again the steps after its checkpoint; a killed job may leave a torn line."""
    from hmsa.training import curves

    for step, loss in ((1, 3.0), (2, 2.5), (3, 2.4), (2, 2.6), (3, 2.2), (4, 2.0)):
        curves.append(tmp_path, step, loss, 0.01)
    with open(tmp_path / curves.FILE, "a") as fh:
        fh.write("5,1.9")  # torn: no lr, no newline
    out = curves.export(tmp_path, tmp_path / "out.csv", total=4)
    lines = out.read_text().splitlines()
    assert lines[0] == "step,loss,lr"
    assert [ln.split(",")[:2] for ln in lines[1:]] == [["1", "3"], ["2", "2.6"], ["3", "2.2"], ["4", "2"]]
