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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hmsa.io import atomic_write_text


class ConfigError(ValueError):
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


_CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("cityscapes", "mapillary"),
    "data.extra_pool": ("none", "coarse", "autolabel"),
    "train.method": ("single", "avgpool", "explicit", "hierarchical"),
    "train.loss": ("cross_entropy", "rmi"),
    "train.bn_stats": ("scale_1", "every_scale"),
    "eval.method": ("single", "avgpool", "maxpool", "explicit", "hierarchical"),
    "autolabel.method": ("single", "avgpool", "maxpool", "explicit", "hierarchical"),
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in the schema")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got bool {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge(obj: Any, delta: dict, source: str, prefix: str = "") -> None:
    """Apply a nested dict of deltas onto a dataclass instance, validating keys and types."""
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
            _merge(current, value, source, f"{path}.")
            continue
        setattr(obj, key, _coerce(value, hints[key], f"{source}: '{path}'"))


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


def _apply_file(cfg: Config, path: Path, seen: tuple[Path, ...] = ()) -> None:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' cycle")
    data = _read_yaml(path)
    base = data.pop("extends", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'extends' must be a path string")
        _apply_file(cfg, path.parent / base, (*seen, path))
    _merge(cfg, data, str(path))


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


def validate(cfg: Config, source: str = "config") -> None:
    """Checks that types alone cannot express (choices, ranges)."""
    flat = to_dict(cfg)
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        if flat[section][name] not in choices:
            raise ConfigError(f"{source}: '{key}' must be one of {choices}, got {flat[section][name]!r}")
    if not 0.0 <= cfg.autolabel.threshold <= 1.0:
        raise ConfigError(f"{source}: 'autolabel.threshold' must be in [0, 1], got {cfg.autolabel.threshold}")
    if not 0.0 <= cfg.data.class_uniform_fraction <= 1.0 or cfg.data.class_uniform_tile <= 0:
        raise ConfigError(f"{source}: 'data.class_uniform_fraction' must be in [0, 1], 'data.class_uniform_tile' > 0")
    if not 0.0 <= cfg.data.extra_pool_probability <= 1.0:
        raise ConfigError(f"{source}: 'data.extra_pool_probability' must be in [0, 1]")
    if len(cfg.data.crop) != 2 or min(cfg.data.crop) <= 0:
        raise ConfigError(f"{source}: 'data.crop' must be [height, width] > 0")
    if cfg.train.method in ("hierarchical", "explicit") and not cfg.model.attention:
        raise ConfigError(f"{source}: 'train.method' {cfg.train.method!r} needs 'model.attention: true'")
    if cfg.train.iterations <= 0 or cfg.train.batch_size <= 0:
        raise ConfigError(f"{source}: 'train.iterations' and 'train.batch_size' must be > 0")
    for key, scales in (("train.scales", cfg.train.scales), ("eval.scales", cfg.eval.scales),
                        ("autolabel.scales", cfg.autolabel.scales)):
        if not scales or min(scales) <= 0:
            raise ConfigError(f"{source}: '{key}' must be a non-empty list of positive scales")


def explicit_scales(cfg: Config) -> tuple[float, ...] | None:
    """The scale set of Chen et al.'s joint attention head, fixed when the model is built: the
    training scales of an explicit-attention run, None for every other run."""
    return tuple(sorted(cfg.train.scales)) if cfg.train.method == "explicit" else None


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (and what it extends), then ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        _apply_file(cfg, Path(path))
    for text in overrides:
        _merge(cfg, parse_override(text), f"override '{text}'")
    validate(cfg, str(path) if path is not None else "config")
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
