"""Evaluate a model at any scale set with any fusion method (Tables 1-4).

Under DDP rank r takes images r, r+W, r+2W, ...; confusion matrices and image counts are summed
across ranks, so every image is counted exactly once (the authors' code dropped 4 of 500).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hmsa.errors import BadInputError
from hmsa.evaluation.metrics import confusion, summarize
from hmsa.evaluation.settings import Setting
from hmsa.io import atomic_write, atomic_write_json, atomic_write_text, check_output, clean_tmp
from hmsa.training import distributed

log = logging.getLogger("hmsa.evaluate")

def load_model(path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a model file, its meta checked and its weights fitting (``hmsa.model_file``)."""
    from hmsa import model_file

    return model_file.build(path, device)


def _dataset(dataset: str, root: Path, split: str, max_images: int) -> Any:
    from hmsa.data import build_dataset
    from hmsa.data.transforms import eval_transform

    ds = build_dataset(dataset, root, split, transform=eval_transform())
    n = len(ds) if max_images <= 0 else min(max_images, len(ds))
    return ds, n


def _per_class_csv(class_names: list[str], results: dict[str, dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class", *results])
    for name in class_names:
        row = [results[s]["per_class"][name] for s in results]
        writer.writerow([name, *("" if v is None else f"{v:.6f}" for v in row)])
    return buf.getvalue()


def prediction_path(pred_dir: Path, setting: Setting, dataset: str, name: str) -> Path:
    """Where ``--save-predictions`` puts one image's prediction: one folder per setting, file names that
    ``hmsa score`` (and the Cityscapes benchmark) pair with the ground truth."""
    if dataset == "cityscapes":  # name = <city>/<city>_<seq>_<frame>
        return Path(pred_dir) / setting.name / f"{name}_pred_labelIds.png"
    return Path(pred_dir) / setting.name / f"{name}.png"


def _save_prediction(path: Path, pred: torch.Tensor, dataset: str) -> None:
    """Cityscapes: trainIds back to labelIds (what the benchmark expects); Mapillary: class indices."""
    from PIL import Image

    from hmsa.data.labels import cityscapes_train_to_label_lut

    arr = pred.numpy().astype(np.uint8)
    if dataset == "cityscapes":
        arr = cityscapes_train_to_label_lut()[arr]
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def run_evaluation(dataset: str, root: Path, split: str, model_path: Path, settings: list[Setting],
                   out_dir: Path, max_images: int = 0, save_maps: int = 0,
                   save_predictions: Path | None = None) -> dict[str, Any]:
    """Write ``out_dir/metrics.json`` and ``out_dir/per_class.csv``; return the metrics. With
    ``save_predictions``, also each image's prediction PNG (see ``prediction_path``)."""
    from hmsa import model_file
    from hmsa.models.multiscale import predict_multiscale, require_finite

    if not settings:
        raise BadInputError("evaluate: give at least one --setting")
    dist = distributed.init_from_env()
    out_dir = Path(out_dir)
    if dist.is_main:  # an earlier run's results must not pass for this one's if this one fails
        clean_tmp(out_dir)
        for stale in ("metrics.json", "per_class.csv", "confusion.npz"):
            check_output(out_dir / stale, "evaluate output")  # a directory there, a read-only disk: now
            (out_dir / stale).unlink(missing_ok=True)
    model, meta = load_model(Path(model_path), dist.device)
    ds, n = _dataset(dataset, Path(root), split, max_images)
    model_file.check_dataset(Path(model_path), meta, dataset, list(ds.class_names))
    model_file.check_methods(Path(model_path), meta, [s.method for s in settings])
    c = meta["num_classes"]
    confs = {s.name: torch.zeros(c, c, dtype=torch.int64) for s in settings}
    seen = torch.zeros(1, dtype=torch.int64)
    t0 = time.time()
    with torch.no_grad():
        for i in range(dist.rank, n, dist.world_size):
            sample = ds[i]
            image = sample["image"][None].to(dist.device)
            for s in settings:
                logits = require_finite(predict_multiscale(model, image, list(s.scales), s.method, flip=s.flip),
                                        model_path, sample["name"], s.spec)
                pred = logits.argmax(1)[0].cpu()
                confs[s.name] += confusion(pred, sample["label"], c)
                if save_predictions is not None:
                    _save_prediction(prediction_path(save_predictions, s, dataset, sample["name"]), pred, dataset)
            seen += 1
    for conf in confs.values():
        distributed.all_reduce_sum(conf)
    distributed.all_reduce_sum(seen)
    if int(seen) != n:
        raise RuntimeError(f"evaluated {int(seen)} images, expected {n}")
    names = list(meta["class_names"])
    results = {s.name: {"method": s.method, "scales": list(s.scales), "flip": s.flip,
                        **summarize(confs[s.name].numpy(), names)} for s in settings}
    metrics = {"dataset": dataset, "split": split, "images": n, "model": str(model_path),
               "model_config_hash": meta.get("config_hash", ""), "seconds": round(time.time() - t0, 2),
               "settings": results}
    if dist.is_main:
        _log_to_mlflow(metrics, names, out_dir, Path(root))
        if save_maps > 0:
            _save_maps(model, ds, settings, min(save_maps, n), out_dir / "maps", dataset)
        atomic_write_text(out_dir / "per_class.csv", _per_class_csv(names, results))
        # the raw matrices (rows = ground truth), for re-analysis without re-running the model
        atomic_write(out_dir / "confusion.npz", lambda tmp: _save_npz(tmp, confs))
        atomic_write_json(out_dir / "metrics.json", metrics)  # last: its presence means complete
    distributed.shutdown()
    return metrics


def _save_npz(path: Path, confs: dict[str, torch.Tensor]) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would append .npz to the temp name
        np.savez(fh, **{name: conf.numpy() for name, conf in confs.items()})


def _log_to_mlflow(metrics: dict, names: list[str], out_dir: Path, root: Path | None = None) -> None:
    """The stage run and one nested run per setting (``hmsa.evaluation.mlflow_runs``)."""
    from hmsa.evaluation.mlflow_runs import log_evaluation

    log_evaluation(metrics, names, out_dir, root)


def _save_maps(model: nn.Module, ds: Any, settings: list[Setting], count: int, out: Path,
               dataset: str) -> None:
    """Per-scale predictions and attention maps (Figure 3) for the attention settings."""
    from hmsa.models.multiscale import predict_multiscale_with_maps
    from hmsa.reporting.visualize import save_scale_maps

    attn = [s for s in settings if s.method in ("hierarchical", "explicit")]
    if not attn:
        return
    s = max(attn, key=lambda x: len(x.scales))
    with torch.no_grad():
        for i in range(count):
            sample = ds[i]
            fused, per_scale = predict_multiscale_with_maps(model, sample["image"][None], list(s.scales), s.method)
            save_scale_maps(out / f"{i:03d}_{s.name}.png", sample["image"], sample["label"],
                            fused[0].argmax(0), per_scale, dataset)
    log.info("saved %d attention figures to %s", count, out)
