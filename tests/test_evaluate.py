"""`hmsa evaluate`: saved predictions score to the same mIoU with `hmsa score`, and a 2-process DDP
evaluation (gloo on CPU) counts every image exactly once, with the same confusion matrix as 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hmsa.cli import main
from hmsa.data.labels import CITYSCAPES_CLASSES, MAPILLARY_V12_LABELS
from hmsa.data.synth import generate

ROOT = Path(__file__).resolve().parents[1]


def write_model(path: Path, num_classes: int, names: list[str], seed: int = 0, bias: int | None = None) -> Path:
    """An untrained tiny model file (random weights give varied, imperfect predictions); ``bias`` favours
    one class so that some predictions are right."""
    from hmsa.models import build_model

    torch.manual_seed(seed)
    model = build_model("hrnet_ocr_tiny", num_classes, attention=True)
    if bias is not None:
        last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == num_classes]
        with torch.no_grad():
            for conv in last:
                if conv.bias is not None:
                    conv.bias[bias] += 2.0
    dataset = {19: "cityscapes", 65: "mapillary"}[num_classes]
    meta = {"name": "hrnet_ocr_tiny", "num_classes": num_classes, "attention": True, "class_names": names,
            "dataset": dataset, "config_hash": "test"}
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return path


@pytest.fixture(scope="module")
def five_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cityscapes with an odd number of val images (5), so 2 ranks get 3 and 2."""
    root = tmp_path_factory.mktemp("five") / "data"
    generate(root, seed=2, cityscapes_counts={"val": 5}, mapillary_counts={"training": 1, "validation": 3},
             size=(32, 64))
    return root


def _evaluate(data: Path, dataset: str, model: Path, out: Path, preds: Path | None = None) -> int:
    argv = ["evaluate", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model", str(model),
            "--out-dir", str(out), "--setting", "hierarchical:0.5,1", f"data.dataset={dataset}",
            f"data.root={data / dataset}", "eval.max_images=0", "eval.save_maps=0",
            f"eval.split={'val' if dataset == 'cityscapes' else 'validation'}"]
    return main(argv + (["--save-predictions", str(preds)] if preds else []))


@pytest.mark.parametrize("dataset", ["cityscapes", "mapillary"])
def test_saved_predictions_score_to_the_same_miou(five_val: Path, tmp_path: Path, dataset: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMSA_TRACKING", "0")
    names = CITYSCAPES_CLASSES if dataset == "cityscapes" else [x["readable"] for x in MAPILLARY_V12_LABELS[:65]]
    model = write_model(tmp_path / "m.pt", len(names), names, bias=names.index("Sky" if dataset == "mapillary"
                                                                          else "sky"))
    assert _evaluate(five_val, dataset, model, tmp_path / "eval", tmp_path / "preds") == 0
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())["settings"]["hierarchical_0.5-1"]
    pred_dir = tmp_path / "preds/hierarchical_0.5-1"
    files = sorted(pred_dir.rglob("*.png"))
    assert len(files) == (5 if dataset == "cityscapes" else 3)
    ids = np.unique(np.concatenate([np.asarray(Image.open(f)).ravel() for f in files]))
    if dataset == "cityscapes":  # labelIds, the benchmark's format: no trainId 1..6 that is not a labelId
        from cityscapesscripts.helpers.labels import id2label

        assert all(id2label[int(i)].trainId < 255 for i in ids)
        gt = five_val / "cityscapes/gtFine/val"
    else:
        assert ids.max() < 65
        gt = five_val / "mapillary/validation/v1.2/labels"
    assert main(["score", "--dataset", dataset, "--gt", str(gt), "--pred", str(pred_dir),
                 "--out", str(tmp_path / "score.json")]) == 0
    scored = json.loads((tmp_path / "score.json").read_text())
    assert 0.0 < metrics["pixel_accuracy"] < 1.0  # imperfect but not empty: the comparison means something
    assert scored["miou"] == pytest.approx(metrics["miou"], abs=1e-12)
    assert scored["pixel_accuracy"] == pytest.approx(metrics["pixel_accuracy"], abs=1e-12)
    assert scored["pixels"] == metrics["pixels"]
    assert scored["per_class"] == pytest.approx(metrics["per_class"], abs=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_evaluation_counts_each_image_once(five_val: Path, tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.pt", 19, CITYSCAPES_CLASSES)
    single = tmp_path / "single"
    env = {**os.environ, "HMSA_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "hmsa", "evaluate", "--config", str(ROOT / "configs/experiments/tiny.yaml"),
            "--model", str(model), "--setting", "avgpool:0.5,1", f"data.root={five_val / 'cityscapes'}",
            "eval.max_images=0", "eval.save_maps=0"]
    subprocess.run([*argv, "--out-dir", str(single)], env=env, check=True, capture_output=True)
    port = str(_free_port())
    procs = [subprocess.Popen([*argv, "--out-dir", str(tmp_path / "ddp"), "--save-predictions",
                               str(tmp_path / "preds")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ddp = json.loads((tmp_path / "ddp/metrics.json").read_text())
    assert ddp["images"] == 5
    one = np.load(single / "confusion.npz")["avgpool_0.5-1"]
    two = np.load(tmp_path / "ddp/confusion.npz")["avgpool_0.5-1"]
    assert one.sum() == 5 * 32 * 64 - (ddp_ignored := _ignored(five_val))
    assert ddp_ignored >= 0
    np.testing.assert_array_equal(one, two)
    assert len(list((tmp_path / "preds").rglob("*.png"))) == 5  # rank 0 wrote 3, rank 1 wrote 2


def _ignored(data: Path) -> int:
    """Pixels whose ground truth is ignored (labelIds without a trainId), over the 5 val images."""
    from hmsa.data.labels import cityscapes_label_to_train_lut

    lut = cityscapes_label_to_train_lut()
    files = sorted((data / "cityscapes/gtFine/val").rglob("*_labelIds.png"))
    return int(sum((lut[np.asarray(Image.open(f))] == 255).sum() for f in files))


def test_standalone_evaluate_is_tracked_in_the_pipeline_experiment(five_val: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside `hmsa submit`: the run lands in the embedded pipeline's experiment, named for what it
    ran, with the git commit and config, and each setting as a nested run."""
    from mlflow.tracking import MlflowClient

    from hmsa import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.ENV_EXPERIMENT, raising=False)
    monkeypatch.setenv("HMSA_TRACKING_FINISH_WAIT_SECONDS", "0")
    model = write_model(tmp_path / "m.pt", 19, CITYSCAPES_CLASSES, bias=CITYSCAPES_CLASSES.index("sky"))
    assert _evaluate(five_val, "cityscapes", model, tmp_path / "my_eval") == 0
    metrics = json.loads((tmp_path / "my_eval/metrics.json").read_text())
    client = MlflowClient()
    exp = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    assert exp is not None and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.experiment_id == exp.experiment_id and run.info.status == "FINISHED"
    assert run.info.run_name == "evaluate · my_eval"
    t = run.data.tags
    assert t["hmsa.kind"] == "standalone" and t["mlflow.source.git.commit"] and t["hmsa.config_hash"]
    assert t["hmsa.data_version"] == "unversioned"
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    (kid,) = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert kid.info.run_name == "my_eval · hierarchical:0.5,1"
    setting = metrics["settings"]["hierarchical_0.5-1"]
    assert kid.info.run_id == setting["mlflow_run_id"]
    assert kid.data.metrics["miou"] == round(100 * setting["miou"], 2) > 0
    assert kid.data.metrics["iou/sky"] == round(100 * setting["per_class"]["sky"], 2)
