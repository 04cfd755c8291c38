"""Typed configuration of one training / evaluation / auto-labelling run.

The schema below is the single place where defaults live (like detectron2's ``defaults.py``).
Experiment YAML files hold *deltas only*; ``extends: other.yaml`` chains files. Unknown keys and
wrong types fail with the file and the dotted key path. Command-line overrides use ``key.sub=value``
(the value is parsed as YAML). The resolved config is written into every run directory, so a run
can always be re-created from its own folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hmsa.errors import HmsaError
from hmsa.io import atomic_write_text


class ConfigError(HmsaError, ValueError):
    """A config file or override is invalid; the message names the file and the key."""


@dataclass
class DataConfig:
    dataset: str = "cityscapes"  # cityscapes | mapillary
    root: str = ""  # dataset root (Cityscapes: the folder holding leftImg8bit/, gtFine/, gtCoarse/)
    train_split: str = "train"
    val_split: str = "val"
    # Student recipe (section 5.1.1): train on train+val fine.
    train_includes_val: bool = False
    # Second pool mixed into training: none | coarse (original gtCoarse) | autolabel (teacher's labels).
    extra_pool: str = "none"
    extra_pool_root: str = ""  # folder of auto-labels (extra_pool: autolabel)
    extra_pool_probability: float = 0.5  # chance that a sample is drawn from the extra pool
    # Class-uniform sampling (section 5.1): share of samples drawn class-uniformly, centroid tile size,
    # and where the centroid cache lives ("" = <run dir>/../centroids).
    class_uniform_fraction: float = 0.5
    class_uniform_tile: int = 1024
    centroid_cache: str = ""
    crop: list[int] = field(default_factory=lambda: [64, 128])  # H, W
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    color_jitter: float = 0.25
    blur_prob: float = 0.5
    num_workers: int = 0
    max_images: int = 0  # 0 = every image (a cap for quick experiments)


@dataclass
class ModelConfig:
    name: str = "hrnet_ocr_tiny"  # a key of hmsa.models.MODELS
    attention: bool = True  # build the attention head (section 3.1)
    pretrained: bool = False  # ImageNet trunk weights through timm (needs network)
    weights: str = ""  # local file with trunk weights (used instead of a download)
    init: str = ""  # checkpoint to initialise from (e.g. the Mapillary pre-training)


@dataclass
class TrainConfig:
    # single | avgpool (both plain single-scale training) | explicit | hierarchical
    method: str = "hierarchical"
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0])
    iterations: int = 100
    batch_size: int = 2  # per process
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5.0e-4
    poly_power: float = 1.0
    warmup_iterations: int = 0
    loss: str = "cross_entropy"  # cross_entropy | rmi (the paper's main loss, hmsa/training/rmi.py)
    aux_weight: float = 0.4
    scale_supervision_weight: float = 0.0  # per-scale supervision (paper: 0.05)
    checkpoint_every: int = 50
    log_every: int = 10
    # BatchNorm running statistics in multi-scale training: "scale_1" = only the 1.0 forward updates
    # them (ours, hmsa/models/multiscale.py); "every_scale" = every forward does (the authors' code).
    bn_stats: str = "scale_1"
    # Mixed precision (torch.autocast float16 + GradScaler) and SyncBatchNorm under DDP: CUDA only.
    # Off by default; the paper recipe turns both on. On CPU they are a logged no-op, so one config
    # runs anywhere (the resume key does not depend on the device).
    amp: bool = False
    sync_bn: bool = False


@dataclass
class EvalConfig:
    split: str = "val"
    method: str = "hierarchical"  # single | avgpool | maxpool | explicit | hierarchical
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    flip: bool = False
    max_images: int = 0
    save_maps: int = 2  # images for which per-scale predictions and attention maps are saved


@dataclass
class AutolabelConfig:
    threshold: float = 0.9  # section 4: hard labels where max prob >= 0.9 (the authors' code used 0.5)
    split: str = "train_extra"
    method: str = "hierarchical"  # the teacher's multi-scale fusion
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    flip: bool = False


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    autolabel: AutolabelConfig = field(default_factory=AutolabelConfig)


# Everything types alone cannot say, declared once per key; ``validate`` applies these tables and
# nothing else is checked anywhere (a stage that got a config from ``load`` may trust its values).
_CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("cityscapes", "mapillary"),
    "data.extra_pool": ("none", "coarse", "autolabel"),
    "train.method": ("single", "avgpool", "explicit", "hierarchical"),
    "train.loss": ("cross_entropy", "rmi"),
    "train.bn_stats": ("scale_1", "every_scale"),
    "eval.method": ("single", "avgpool", "maxpool", "explicit", "hierarchical"),
    "autolabel.method": ("single", "avgpool", "maxpool", "explicit", "hierarchical"),
}


@dataclass(frozen=True)
class Range:
    """Bounds of a number (of every item, for a list); ``*_open`` excludes the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, v: float) -> bool:
        return not ((self.low is not None and (v < self.low or (self.low_open and v == self.low)))
                    or (self.high is not None and (v > self.high or (self.high_open and v == self.high))))

    def text(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


_POSITIVE, _NON_NEGATIVE, _FRACTION = Range(0, low_open=True), Range(0), Range(0, 1)
_RANGES: dict[str, Range] = {
    "seed": _NON_NEGATIVE,
    "data.extra_pool_probability": _FRACTION, "data.class_uniform_fraction": _FRACTION,
    "data.class_uniform_tile": _POSITIVE, "data.crop": _POSITIVE, "data.scale_range": _POSITIVE,
    "data.color_jitter": _NON_NEGATIVE, "data.blur_prob": _FRACTION, "data.num_workers": _NON_NEGATIVE,
    "data.max_images": _NON_NEGATIVE,  # 0 = every image
    "train.scales": _POSITIVE, "train.iterations": _POSITIVE, "train.batch_size": _POSITIVE,
    "train.lr": _POSITIVE, "train.momentum": Range(0, 1, high_open=True), "train.weight_decay": _NON_NEGATIVE,
    "train.poly_power": _NON_NEGATIVE,  # 0 = a constant learning rate
    "train.warmup_iterations": _NON_NEGATIVE, "train.aux_weight": _NON_NEGATIVE,
    "train.scale_supervision_weight": _NON_NEGATIVE,
    "train.checkpoint_every": _POSITIVE, "train.log_every": _POSITIVE,
    "eval.scales": _POSITIVE, "eval.max_images": _NON_NEGATIVE, "eval.save_maps": _NON_NEGATIVE,
    "autolabel.threshold": _FRACTION, "autolabel.scales": _POSITIVE,
}
# Lists of two: [height, width], and [min, max] (sorted low to high).
_PAIRS: dict[str, str] = {"data.crop": "[height, width]", "data.scale_range": "[min, max] with min <= max"}
# Scale sets: the fusion chains from 1.0 (eq. 1, hmsa/models/multiscale.py), and a repeated scale
# would run a single-scale model under a multi-scale name.
_SCALE_SETS = ("train.scales", "eval.scales", "autolabel.scales")
# The splits of each dataset's on-disk layout (the loaders in hmsa/data read these names).
DATASET_SPLITS: dict[str, tuple[str, ...]] = {"cityscapes": ("train", "val", "test", "train_extra"),
                                              "mapillary": ("training", "validation")}
_SPLIT_KEYS = ("data.train_split", "data.val_split", "eval.split")
# Hierarchical attention is trained on this pair only (section 3).
HIERARCHICAL_TRAIN_SCALES = [0.5, 1.0]


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    where = f"{source}: '{key}'"
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in the schema")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        # YAML reads .nan / .inf / 1e999: a NaN learning rate fails only at iteration 1 otherwise
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got bool {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge(obj: Any, delta: dict, source: str, prefix: str = "", origins: dict[str, str] | None = None) -> None:
    """Apply a nested dict of deltas onto a dataclass instance, validating keys and types; ``origins``
    records which file or override set each key last (named when a value is out of bounds)."""
    if not isinstance(delta, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in delta.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{path}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, source, f"{path}.", origins)
            continue
        setattr(obj, key, _coerce(value, hints[key], source, path))
        if origins is not None:
            origins[path] = source


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _chain(path: str | Path) -> list[tuple[Path, dict]]:
    """The file and every file it ``extends``, nearest first, each read once, with its data (without
    ``extends``); each path spelled from ``path`` (a relative path stays relative)."""
    chain: list[tuple[Path, dict]] = []
    current = Path(os.path.normpath(path))
    while True:
        if current.resolve() in (p.resolve() for p, _ in chain):
            raise ConfigError(f"{current.resolve()}: 'extends' cycle")
        data = _read_yaml(current)
        base = data.pop("extends", None)
        chain.append((current, data))
        if base is None:
            return chain
        if not isinstance(base, str):
            raise ConfigError(f"{current.resolve()}: 'extends' must be a path string")
        current = Path(os.path.normpath(current.parent / base))


def config_files(path: str | Path) -> list[Path]:
    """The experiment file and every file it ``extends``, nearest first: what its config depends on.
    The DAG declares them all as inputs, so editing a shared base re-runs the stages built on it."""
    return [file for file, _ in _chain(path)]


def _apply_file(cfg: Config, path: Path, origins: dict[str, str] | None = None) -> None:
    for file, data in reversed(_chain(path)):  # the farthest base first, the file itself last
        _merge(cfg, data, str(file.resolve()), origins=origins)


def parse_override(text: str) -> dict:
    """``a.b=value`` -> ``{"a": {"b": value}}`` with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML") from exc
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config, source: str = "config", origins: dict[str, str] | None = None) -> None:
    """Apply the tables above (choices, ranges, pairs, scale sets) and the few rules that tie two keys
    together; the first violation is raised, naming the key and where it was set (``origins``, else
    ``source``)."""
    def fail(key: str, what: str) -> None:
        where = (origins or {}).get(key.partition("[")[0], source)
        raise ConfigError(f"{where}: '{key}' {what}")

    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            fail(key, f"must be one of {choices}, got {_get(cfg, key)!r}")
    for key, rng in _RANGES.items():
        value = _get(cfg, key)
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if not rng.holds(v):
                fail(f"{key}[{i}]" if isinstance(value, list) else key, f"must be {rng.text()}, got {v!r}")
    for key, shape in _PAIRS.items():
        value = _get(cfg, key)
        if len(value) != 2 or (key == "data.scale_range" and value[0] > value[1]):
            fail(key, f"must be {shape}, got {value!r}")
    for key in _SCALE_SETS:
        scales = _get(cfg, key)
        if 1.0 not in scales:
            fail(key, f"must include the 1.0 scale, got {scales!r}")
        if len(set(scales)) != len(scales):
            fail(key, f"repeats a scale: {scales!r}")
    for key in (*_SPLIT_KEYS, "autolabel.split"):
        # only the splits a file or override set: the defaults are Cityscapes' names, and a command
        # that reads one split of Mapillary (evaluate) need not rename the others
        if origins is not None and key not in origins:
            continue
        splits = DATASET_SPLITS["cityscapes" if key == "autolabel.split" else cfg.data.dataset]
        if _get(cfg, key) not in splits:
            fail(key, f"must be a split of the dataset, one of {splits}, got {_get(cfg, key)!r}")
    if cfg.data.extra_pool != "none" and cfg.data.dataset != "cityscapes":
        fail("data.extra_pool", "needs data.dataset 'cityscapes' (only Cityscapes has a coarse pool)")
    if cfg.train.method in ("hierarchical", "explicit") and not cfg.model.attention:
        fail("train.method", f"{cfg.train.method!r} needs 'model.attention: true'")
    if cfg.train.method == "hierarchical" and sorted(cfg.train.scales) != HIERARCHICAL_TRAIN_SCALES:
        fail("train.scales", f"of hierarchical training must be {HIERARCHICAL_TRAIN_SCALES} (section 3), "
                             f"got {cfg.train.scales!r}")


def explicit_scales(cfg: Config) -> tuple[float, ...] | None:
    """The scale set of Chen et al.'s joint attention head, fixed when the model is built: the
    training scales of an explicit-attention run, None for every other run."""
    return tuple(sorted(cfg.train.scales)) if cfg.train.method == "explicit" else None


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (and what it extends), then ``key=value`` overrides."""
    cfg = Config()
    origins: dict[str, str] = {}
    if path is not None:
        _apply_file(cfg, Path(path), origins=origins)
    for text in overrides:
        _merge(cfg, parse_override(text), f"override '{text}'", origins=origins)
    validate(cfg, str(path) if path is not None else "config (defaults)", origins)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_hash(cfg: Config) -> str:
    """Stable short hash of the resolved config (a tag that groups identical runs)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dump(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (YAML) atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
