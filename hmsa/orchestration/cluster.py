"""Cluster files (``configs/cluster/*.yaml``): the executor and per-stage resources, checked up front.

defaults < kinds (prepare / train / autolabel / evaluate) < stages; every key maps to one submitit
``AutoExecutor`` parameter, so a typo fails with the file and key path instead of reaching ``sbatch``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hmsa.errors import HmsaError, one_line
from hmsa.orchestration.pipeline import base_stage

EXECUTORS = ("local", "slurm", "debug")
# Resource keys accepted in a cluster file, mapped to submitit's AutoExecutor parameter names.
RESOURCE_KEYS = {
    "timeout_min": "timeout_min", "nodes": "nodes", "tasks_per_node": "tasks_per_node",
    "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb",
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "constraint": "slurm_constraint", "max_requeue": "slurm_max_num_timeout",
    "additional_parameters": "slurm_additional_parameters",
}


class ClusterConfigError(HmsaError, ValueError):
    pass


@dataclass
class ClusterConfig:
    path: str
    executor: str
    defaults: dict[str, Any] = field(default_factory=dict)
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resources(self, stage: str, kind: str) -> dict[str, Any]:
        """defaults < per-kind < per-stage."""
        # a stage's per-seed copies (``<stage>_seed<N>``, hmsa.orchestration.pipeline) ask for what the stage asks for
        base = base_stage(stage)
        return {**self.defaults, **self.kinds.get(kind, {}), **self.stages.get(base, {}), **self.stages.get(stage, {})}


# The resource classes the rules submit with (``hmsa submit --kind``).
KINDS = ("prepare", "train", "autolabel", "evaluate")
# Bounds of the whole-number keys: a job needs at least one node, task, CPU, minute and GB.
_INT_KEYS = {"timeout_min": 1, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1,
             "mem_gb": 1, "max_requeue": 0}
_STR_KEYS = {"partition", "account", "qos", "constraint"}


def _check_resources(path: str, where: str, res: Any) -> dict[str, Any]:
    if not isinstance(res, dict):
        raise ClusterConfigError(f"{path}: '{where}' must be a mapping of resources, got {res!r}")
    for key, value in res.items():
        if key not in RESOURCE_KEYS:
            raise ClusterConfigError(f"{path}: unknown key '{where}.{key}' (known: {', '.join(RESOURCE_KEYS)})")
        if key in _INT_KEYS:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= _INT_KEYS[key]
            kind = f"a whole number >= {_INT_KEYS[key]}"
        else:
            ok = isinstance(value, str) if key in _STR_KEYS else isinstance(value, dict)
            kind = "text" if key in _STR_KEYS else "a mapping"
        if not ok:
            raise ClusterConfigError(f"{path}: '{where}.{key}' must be {kind}, got {value!r}")
    return res


def _section(path: str, data: dict, name: str, known: Iterable[str] | None) -> dict[str, dict[str, Any]]:
    """``kinds`` or ``stages``: a mapping of names (``known`` ones only, when given) to resources."""
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ClusterConfigError(f"{path}: '{name}' must be a mapping of names to resources, got {section!r}")
    allowed = None if known is None else set(known)
    for key in section:
        # a stage's per-seed copies (``<stage>_seed<N>``) are named by the stage
        if allowed is not None and key not in allowed and base_stage(str(key)) not in allowed:
            raise ClusterConfigError(f"{path}: '{name}.{key}': no {name[:-1]} of that name "
                                     f"(known: {', '.join(sorted(allowed))})")
    return {k: _check_resources(path, f"{name}.{k}", v) for k, v in section.items()}


def _read(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise ClusterConfigError(f"{p}: cluster config not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ClusterConfigError(f"{p}: not valid YAML ({getattr(exc, 'problem', None) or one_line(str(exc))}"
                                 f"{where})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterConfigError(f"{p}: not readable ({exc})") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ClusterConfigError(f"{p}: the top level must be a mapping (executor, defaults, kinds, stages), "
                                 f"got {type(data).__name__}")
    return data


def load_cluster(path: str | Path, stages: Iterable[str] | None = None) -> ClusterConfig:
    """Read and check a cluster file: known keys only, typed and bounded values, known kinds, and (with
    ``stages``, the stage names of the pipeline that uses it) known stages."""
    p = Path(path)
    data = _read(p)
    unknown = set(data) - {"executor", "defaults", "kinds", "stages"}
    if unknown:
        raise ClusterConfigError(f"{p}: unknown key '{sorted(map(str, unknown))[0]}' "
                                 "(known: executor, defaults, kinds, stages)")
    executor = data.get("executor", "local")
    if executor not in EXECUTORS:
        raise ClusterConfigError(f"{p}: 'executor' must be one of {EXECUTORS}, got {executor!r}")
    defaults = _check_resources(str(p), "defaults", data.get("defaults") or {})
    kinds = _section(str(p), data, "kinds", KINDS)
    stage_res = _section(str(p), data, "stages", stages)
    return ClusterConfig(str(p), executor, defaults, kinds, stage_res)
