"""A model file says what it is, and every reader checks it (DESIGN: "A model file says what it is").

``results/<stage>/model.pt`` holds ``{"model": state_dict, "meta": {...}}``. The meta names the
architecture (``name``), the multi-scale head (``attention``, ``explicit_scales``), the dataset and
its class names, and the stage and run that made it. Readers refuse, in one line naming the file:

- a file that is not a model file, or whose meta is incomplete or inconsistent (too few class names);
- weights that do not fit the architecture the meta names (another trunk, another class count);
- ``hmsa evaluate`` / ``hmsa autolabel`` on another dataset, or with another class list, than the
  model was trained on (a Mapillary model "evaluated" on Cityscapes would score 65 classes against 19);
- a fusion setting the model has no head for (``hierarchical`` needs the attention head);
- ``model.init`` of another architecture (nothing would transfer; the run would silently start
  from scratch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hmsa.data.errors import DataError

# meta key -> the type it must have
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "name": str, "num_classes": int, "class_names": list, "dataset": str, "attention": bool}


class ModelFileError(DataError):
    """A model file that is unusable here; the message names the file (a ValueError: one CLI line)."""


def head_kind(meta: dict[str, Any]) -> str:
    """``explicit`` (joint scale attention), ``hierarchical`` (the paper's head) or ``none``."""
    if not meta.get("attention"):
        return "none"
    return "explicit" if meta.get("explicit_scales") else "hierarchical"


def describe(meta: dict[str, Any]) -> str:
    """``hrnet_ocr_tiny, hierarchical attention, mapillary, 65 classes``."""
    head = {"none": "no attention", "hierarchical": "hierarchical attention",
            "explicit": f"explicit attention at {meta.get('explicit_scales')}"}[head_kind(meta)]
    return f"{meta.get('name')}, {head}, {meta.get('dataset')}, {meta.get('num_classes')} classes"


def validate(path: Path, meta: Any) -> dict[str, Any]:
    """The meta of a model file, complete and consistent, or a ModelFileError naming the file."""
    from hmsa.data import DATASETS
    from hmsa.models import MODELS

    if not isinstance(meta, dict):
        raise ModelFileError(path, "not an hmsa model file ('meta' is not a mapping)")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ModelFileError(path, f"the model file does not say its {', '.join(missing)} (written by an older "
                                   "hmsa, or by hand?): export it again with `hmsa train --out-model`")
    for key, kind in REQUIRED.items():
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise ModelFileError(path, f"meta '{key}' must be a {getattr(kind, '__name__', kind)}, "
                                       f"got {meta[key]!r}")
    if meta["name"] not in MODELS:
        raise ModelFileError(path, f"unknown architecture {meta['name']!r} (known: {', '.join(MODELS)})")
    if meta["dataset"] not in DATASETS:
        raise ModelFileError(path, f"unknown dataset {meta['dataset']!r} (known: {', '.join(DATASETS)})")
    names, n = meta["class_names"], meta["num_classes"]
    if not all(isinstance(c, str) for c in names) or len(names) != n:
        raise ModelFileError(path, f"meta lists {len(names)} class names for {n} classes")
    expected = getattr(DATASETS[meta["dataset"]], "num_classes", n)
    if n != expected:
        raise ModelFileError(path, f"meta says {n} classes, but {meta['dataset']} has {expected}")
    return meta


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and the validated meta of a model file."""
    from hmsa.training import checkpoint

    path = Path(path)
    state = checkpoint.load(path)
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        checkpoint_like = isinstance(state, dict) and "optimizer" in state
        hint = " (a training checkpoint: use the run's exported model.pt)" if checkpoint_like else ""
        raise ModelFileError(path, f"not an hmsa model file (needs 'model' and 'meta'){hint}")
    return state["model"], validate(path, state["meta"])


def weight_mismatch(model: nn.Module, weights: dict[str, torch.Tensor]) -> str:
    """What keeps ``weights`` from loading strictly into ``model`` ("" when nothing does)."""
    own = model.state_dict()
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensors of another shape (e.g. {k}: {list(weights[k].shape)} in the file, "
                     f"{list(own[k].shape)} in the model)")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts)


def build(path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The model a model file describes, with its weights, in eval mode on ``device``."""
    from hmsa.models import build_model

    path = Path(path)
    weights, meta = read(path)
    model = build_model(meta["name"], meta["num_classes"], attention=meta["attention"],
                        explicit_scales=tuple(meta.get("explicit_scales") or ()) or None)
    wrong = weight_mismatch(model, weights)
    if wrong:
        raise ModelFileError(path, f"its weights do not fit the model its meta describes ({describe(meta)}): {wrong}")
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


def check_dataset(path: Path, meta: dict[str, Any], dataset: str, class_names: list[str]) -> None:
    """Refuse a model trained on another dataset, or with another class list, than the data it reads."""
    names = list(class_names)
    if meta["dataset"] != dataset or len(meta["class_names"]) != len(names):
        raise ModelFileError(path, f"trained on {meta['dataset']} ({meta['num_classes']} classes), "
                                   f"cannot be used on {dataset} ({len(names)} classes)")
    diff = [i for i, (a, b) in enumerate(zip(meta["class_names"], names, strict=True)) if a != b]
    if diff:
        i = diff[0]
        raise ModelFileError(path, f"its class names differ from the dataset's at {len(diff)} places "
                                   f"(class {i}: {meta['class_names'][i]!r} in the model, {names[i]!r} in the data)")


def check_methods(path: Path, meta: dict[str, Any], methods: list[str]) -> None:
    """Refuse a fusion method the model has no head for (before any image is read)."""
    kind = head_kind(meta)
    for method in methods:
        if method in ("hierarchical", "explicit") and kind != method:
            raise ModelFileError(path, f"fusion {method!r} needs a model trained with {method} attention; "
                                       f"this one is {describe(meta)}")


def check_init(path: Path, meta: dict[str, Any], architecture: str) -> None:
    """``model.init`` must be the same architecture (the dataset may differ: Mapillary -> Cityscapes)."""
    if meta["name"] != architecture:
        raise ModelFileError(path, f"model.init is a {meta['name']} model; this run builds {architecture}, "
                                   "so no weights would transfer")
