"""Auto-labelling of the coarse Cityscapes images (section 4): the teacher's multi-scale prediction,
turned into HARD labels — argmax where the max softmax probability >= threshold (paper: 0.9), else
255 (ignore) — stored as uint8 PNGs of trainIds in the Cityscapes layout. Resumable (finished images
are skipped, writes are atomic) and sharded across DDP ranks and across independent jobs (a SLURM
array or ``--shard i/n``): each job writes only its images and a manifest part; the job that completes
the set merges the parts into the manifest.

With ``truth`` (the true labels of the coarse split, which the embedded dataset writes outside the
Cityscapes root), the manifest gains a ``quality`` section: coverage and accuracy of the auto-labels and
of the original coarse labels of the same images, overall, per class and where both label
(:mod:`hmsa.autolabel_quality`). Each part carries its joint pixel counts, so shards merge exactly."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hmsa import autolabel_quality
from hmsa.data.errors import read_file
from hmsa.errors import BadInputError
from hmsa.io import atomic_write, atomic_write_json, check_output, check_writable_dir, clean_tmp, file_sha256, read_json
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
               threshold: float, where: tuple[Path, str]) -> np.ndarray:
    from hmsa.evaluation.settings import Setting
    from hmsa.models.multiscale import predict_multiscale, require_finite

    with torch.no_grad():
        logits = require_finite(predict_multiscale(model, image[None], scales, method, flip=flip), *where,
                                Setting(method, tuple(scales), flip).spec)
    return hard_labels(logits[0].cpu(), threshold).numpy()


def resolve_shard(shard: str | None = None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(index, count) of this job among independent jobs: ``--shard i/n``, else the SLURM array
    (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``), else (0, 1).
    DDP ranks split each shard further."""
    env = dict(os.environ if env is None else env)
    if shard:
        i, sep, n = shard.partition("/")
        if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise BadInputError(f"--shard {shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return int(i), int(n)
    if env.get("SLURM_ARRAY_TASK_ID") and env.get("SLURM_ARRAY_TASK_COUNT"):
        # arrays may start anywhere (--array=1-8): the index is relative to the first task
        i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return i, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


_STAMP = "hmsa-autolabel"  # PNG text chunk: which teacher weights and settings made the label



def _save_label(tmp: Path, label: np.ndarray, made_by: str) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(_STAMP, made_by)
    Image.fromarray(label).save(tmp, format="PNG", pnginfo=info)


def _reusable(path: Path, made_by: str) -> np.ndarray | None:
    """The label already written for this image by the same teacher weights and settings (resume), or
    None. A label from another teacher or threshold is made again, never silently reused: retraining
    the teacher keeps its path but changes its weights. Writes are atomic, so a file is complete."""
    if not path.exists():
        return None

    def read(p: Path) -> tuple[np.ndarray, str]:
        with Image.open(p) as img:
            return np.asarray(img), img.text.get(_STAMP, "")  # type: ignore[attr-defined]

    label, stamp = read_file(path, "auto-label", read)
    return label if stamp == made_by else None


def truth_path(truth_dir: Path, split: str, name: str) -> Path:
    """The true label of a coarse image: ``<truth>/<split>/<city>/<stem>_gtFine_labelIds.png``."""
    return Path(truth_dir) / split / f"{name}_gtFine_labelIds.png"


def _quality_counts(root: Path, truth_dir: Path, split: str, name: str, label: np.ndarray,
                    num_classes: int) -> np.ndarray:
    """Joint pixel counts of (truth, original coarse label, auto-label) of one image, in trainIds."""
    from hmsa.data.cityscapes import LABEL_IDS, label_file
    from hmsa.data.errors import open_label
    from hmsa.data.labels import cityscapes_label_to_train_lut

    lut, size = cityscapes_label_to_train_lut(), (label.shape[1], label.shape[0])
    truth = lut[open_label(truth_path(truth_dir, split, name), LABEL_IDS, size)]
    coarse = lut[open_label(label_file(root, split, name, "coarse"), LABEL_IDS, size)]
    return autolabel_quality.joint_counts(truth, coarse, label, num_classes)


def _part_path(out_dir: Path, key: str, k: int, total: int) -> Path:
    # the parameters' hash in the name: parts of an earlier run with other settings are never merged
    return Path(out_dir) / f".manifest-{key}-part{k:04d}-of-{total:04d}.json"


def run_autolabel(root: Path, split: str, model_path: Path, out_dir: Path, manifest_path: Path,
                  threshold: float, method: str, scales: list[float], flip: bool,
                  max_images: int = 0, shard: tuple[int, int] = (0, 1),
                  truth: Path | None = None) -> dict[str, Any]:
    """Label this job's share of the images; the job that finds every share done writes the manifest
    (so with a SLURM array, whichever task finishes last). Returns the manifest, or {} if not written.
    ``truth``: root of the true labels of ``split`` (adds the manifest's ``quality`` section)."""
    from hmsa import model_file
    from hmsa.data import build_dataset
    from hmsa.data.transforms import eval_transform
    from hmsa.evaluation.evaluate import load_model

    dist = distributed.init_from_env()
    if dist.is_main:  # an earlier manifest must not pass for this run's if this run fails
        check_output(Path(manifest_path), "--manifest")
        Path(manifest_path).unlink(missing_ok=True)
        check_writable_dir(Path(out_dir))
        clean_tmp(Path(out_dir), recursive=True)  # temp files of a killed run (never a live shard's)
    model, meta = load_model(Path(model_path), dist.device)
    ds = build_dataset("cityscapes", Path(root), split, labels="none", transform=eval_transform())
    # labels are written as Cityscapes trainIds: a teacher of another dataset would write other ids
    model_file.check_dataset(Path(model_path), meta, "cityscapes", list(ds.class_names))
    model_file.check_methods(Path(model_path), meta, [method])
    n = len(ds) if max_images <= 0 else min(max_images, len(ds))
    c = meta["num_classes"]
    k, total = shard[0] * dist.world_size + dist.rank, shard[1] * dist.world_size
    labelling = {"threshold": threshold, "method": method, "scales": scales, "flip": flip,
                 "teacher_sha256": file_sha256(Path(model_path))}
    made_by = hashlib.sha256(json.dumps(labelling, sort_keys=True).encode()).hexdigest()[:16]
    params = {**labelling, "split": split, "teacher": str(model_path), "images": n, "parts": total,
              "truth": None if truth is None else str(truth)}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    shard_images: dict[str, Any] = {}
    counts = np.zeros((c + 1,) * 3, np.int64)  # joint (truth, coarse, auto-label) pixels, with truth
    for i in range(k, n, total):
        name = ds.items[i][2]
        path = label_path(out_dir, split, name)
        label = _reusable(path, made_by)
        if label is None:
            label = _label_one(model, ds[i]["image"].to(dist.device), method, scales, flip, threshold,
                               (Path(model_path), name))
            atomic_write(path, lambda tmp, arr=label: _save_label(tmp, arr, made_by))
        frac, pixels = _stats(label, c)
        shard_images[name] = {"labelled_fraction": frac, "class_pixels": pixels}
        if truth is not None:
            counts += _quality_counts(Path(root), Path(truth), split, name, label, c)
    part = {"params": params, "images": shard_images}
    if truth is not None:
        part["quality_counts"] = autolabel_quality.to_cells(counts)
    atomic_write_json(_part_path(out_dir, key, k, total), part)
    distributed.barrier()
    manifest: dict[str, Any] = {}
    parts = [_part_path(out_dir, key, j, total) for j in range(total)]
    if dist.is_main and all(p.exists() for p in parts):
        loaded = [read_json(p) for p in parts]
        manifest = _merge_manifest(loaded, n, meta, threshold, method, scales, flip, model_path, out_dir, split)
        if truth is not None:
            manifest["quality"] = _merge_quality(loaded, meta["class_names"], truth)
        atomic_write_json(Path(manifest_path), manifest)
        _log(manifest, meta["class_names"])
    elif dist.is_main:
        log.info("shard %d/%d done; %d of %d parts present, the last shard writes the manifest",
                 shard[0], shard[1], sum(p.exists() for p in parts), total)
    distributed.shutdown()
    return manifest


def _merge_manifest(parts: list[dict], n: int, meta: dict, threshold: float, method: str,
                    scales: list[float], flip: bool, model_path: Path, out_dir: Path,
                    split: str) -> dict[str, Any]:
    images: dict[str, Any] = {}
    for part in parts:
        images.update(part["images"])
    if len(images) != n:
        raise RuntimeError(f"auto-labelled {len(images)} images, expected {n}")
    names = meta["class_names"]
    totals = np.sum([v["class_pixels"] for v in images.values()], axis=0).tolist()
    fractions = [images[k]["labelled_fraction"] for k in sorted(images)]
    return {"threshold": threshold, "method": method, "scales": scales, "flip": flip, "split": split,
            "teacher": str(model_path), "images": n, "labels_dir": str(out_dir),
            "labelled_fraction_mean": float(np.mean(fractions)) if fractions else 0.0,
            "per_class_pixels": dict(zip(names, totals, strict=True)),
            "per_image": {k: images[k]["labelled_fraction"] for k in sorted(images)}}


def _merge_quality(parts: list[dict], names: list[str], truth: Path) -> dict[str, Any]:
    cells = [p["quality_counts"] for p in parts]
    return {"truth": str(truth), **autolabel_quality.summarize(autolabel_quality.merge_cells(cells, len(names)),
                                                               names)}


def _log(manifest: dict, names: list[str]) -> None:
    tracker = StageTracker.from_env()
    tracker.log_params({"autolabel.threshold": manifest["threshold"], "autolabel.method": manifest["method"],
                        "autolabel.scales": manifest["scales"], "autolabel.flip": manifest["flip"]})
    tracker.log_metrics({"labelled_fraction_mean": manifest["labelled_fraction_mean"],
                         "images": manifest["images"]})
    tracker.log_table({"class": names, "pixels": [manifest["per_class_pixels"][n] for n in names]},
                      artifact_file="autolabel/per_class_pixels.json")
    if "quality" in manifest:  # fractions, like labelled_fraction_mean
        q = manifest["quality"]["sources"]
        tracker.log_metrics({f"quality/{s}/{m}": q[s][m] for s in q for m in ("coverage", "accuracy", "accuracy_both")
                             if q[s][m] is not None})
        frame = autolabel_quality.quality_frame(manifest["quality"]).reset_index()
        tracker.log_table({col: [None if v != v else v for v in frame[col].tolist()] for col in frame.columns},
                          artifact_file="autolabel/quality.json")
    tracker.close()
