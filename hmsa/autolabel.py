"""Auto-labelling of the coarse Cityscapes images (section 4): the teacher's multi-scale prediction,
turned into HARD labels — argmax where the max softmax probability >= threshold (paper: 0.9), else
255 (ignore) — stored as uint8 PNGs of trainIds in the Cityscapes layout. Resumable (finished images
are skipped, writes are atomic) and sharded across ranks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hmsa.io import atomic_write, atomic_write_json, read_json
from hmsa.tracking import StageTracker
from hmsa.training import distributed

log = logging.getLogger("hmsa.autolabel")
IGNORE = 255


def label_path(out_dir: Path, split: str, name: str) -> Path:
    """``name`` is ``<city>/<city>_<seq>_<frame>``; same layout as gtCoarse so the loader reads it."""
    return Path(out_dir) / split / f"{name}_gtCoarse_labelIds.png"


def hard_labels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """C×H×W logits -> H×W uint8: class where its softmax probability >= threshold, else 255."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"autolabel.threshold must be in [0, 1], got {threshold}")
    prob = torch.softmax(logits.float(), dim=0)
    conf, cls = prob.max(dim=0)
    return torch.where(conf >= threshold, cls, torch.full_like(cls, IGNORE)).to(torch.uint8)


def _stats(label: np.ndarray, num_classes: int) -> tuple[float, list[int]]:
    counts = np.bincount(label.ravel(), minlength=256)
    return float(1.0 - counts[IGNORE] / label.size), counts[:num_classes].tolist()


def _label_one(model: torch.nn.Module, image: torch.Tensor, method: str, scales: list[float], flip: bool,
               threshold: float) -> np.ndarray:
    from hmsa.models.multiscale import predict_multiscale

    with torch.no_grad():
        logits = predict_multiscale(model, image[None], scales, method, flip=flip)
    return hard_labels(logits[0].cpu(), threshold).numpy()


def run_autolabel(root: Path, split: str, model_path: Path, out_dir: Path, manifest_path: Path,
                  threshold: float, method: str, scales: list[float], flip: bool,
                  max_images: int = 0) -> dict[str, Any]:
    from hmsa.data import build_dataset
    from hmsa.data.transforms import eval_transform
    from hmsa.evaluation.evaluate import load_model

    dist = distributed.init_from_env()
    model, meta = load_model(Path(model_path), dist.device)
    ds = build_dataset("cityscapes", Path(root), split, labels="none", transform=eval_transform())
    n = len(ds) if max_images <= 0 else min(max_images, len(ds))
    c = meta["num_classes"]
    shard: dict[str, Any] = {}
    for i in range(dist.rank, n, dist.world_size):
        name = ds.items[i][2]
        path = label_path(out_dir, split, name)
        if path.exists():  # resumable: atomic writes mean an existing file is complete
            label = np.asarray(Image.open(path))
        else:
            label = _label_one(model, ds[i]["image"].to(dist.device), method, scales, flip, threshold)
            atomic_write(path, lambda tmp, arr=label: Image.fromarray(arr).save(tmp, format="PNG"))
        frac, counts = _stats(label, c)
        shard[name] = {"labelled_fraction": frac, "class_pixels": counts}
    part = Path(out_dir) / f".manifest-rank{dist.rank}.json"
    atomic_write_json(part, shard)
    distributed.barrier()
    manifest: dict[str, Any] = {}
    if dist.is_main:
        manifest = _merge_manifest(out_dir, dist.world_size, n, meta, threshold, method, scales, flip,
                                   model_path, split)
        atomic_write_json(Path(manifest_path), manifest)
        _log(manifest, meta["class_names"])
    distributed.shutdown()
    return manifest


def _merge_manifest(out_dir: Path, world: int, n: int, meta: dict, threshold: float, method: str,
                    scales: list[float], flip: bool, model_path: Path, split: str) -> dict[str, Any]:
    images: dict[str, Any] = {}
    for r in range(world):
        images.update(read_json(Path(out_dir) / f".manifest-rank{r}.json"))
    if len(images) != n:
        raise RuntimeError(f"auto-labelled {len(images)} images, expected {n}")
    names = meta["class_names"]
    totals = np.sum([v["class_pixels"] for v in images.values()], axis=0).tolist()
    fractions = [v["labelled_fraction"] for v in images.values()]
    return {"threshold": threshold, "method": method, "scales": scales, "flip": flip, "split": split,
            "teacher": str(model_path), "images": n, "labels_dir": str(out_dir),
            "labelled_fraction_mean": float(np.mean(fractions)) if fractions else 0.0,
            "per_class_pixels": dict(zip(names, totals, strict=True)),
            "per_image": {k: images[k]["labelled_fraction"] for k in sorted(images)}}


def _log(manifest: dict, names: list[str]) -> None:
    tracker = StageTracker.from_env()
    tracker.log_params({"autolabel.threshold": manifest["threshold"], "autolabel.method": manifest["method"],
                        "autolabel.scales": manifest["scales"], "autolabel.flip": manifest["flip"]})
    tracker.log_metrics({"labelled_fraction_mean": manifest["labelled_fraction_mean"],
                         "images": manifest["images"]})
    tracker.log_table({"class": names, "pixels": [manifest["per_class_pixels"][n] for n in names]},
                      artifact_file="autolabel/per_class_pixels.json")
    tracker.close()
