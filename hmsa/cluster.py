"""Cluster files (``configs/cluster/*.yaml``): the executor and per-stage resources, checked up front.

defaults < kinds (prepare / train / autolabel / evaluate) < stages; every key maps to one submitit
``AutoExecutor`` parameter, so a typo fails with the file and key path instead of reaching ``sbatch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hmsa.errors import HmsaError
from hmsa.pipeline import base_stage

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
        # a stage's per-seed copies (``<stage>_seed<N>``, hmsa.pipeline) ask for what the stage asks for
        base = base_stage(stage)
        return {**self.defaults, **self.kinds.get(kind, {}), **self.stages.get(base, {}), **self.stages.get(stage, {})}


# Keys whose values must be whole numbers / text / a mapping (checked here, not by sbatch later).
_INT_KEYS = {"timeout_min", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "max_requeue"}
_STR_KEYS = {"partition", "account", "qos", "constraint"}


def _check_resources(path: str, where: str, res: Any) -> dict[str, Any]:
    if not isinstance(res, dict):
        raise ClusterConfigError(f"{path}: '{where}' must be a mapping")
    for key, value in res.items():
        if key not in RESOURCE_KEYS:
            raise ClusterConfigError(f"{path}: unknown key '{where}.{key}' (known: {', '.join(RESOURCE_KEYS)})")
        ok = ((isinstance(value, int) and not isinstance(value, bool) and value >= 0) if key in _INT_KEYS
              else isinstance(value, str) if key in _STR_KEYS else isinstance(value, dict))
        if not ok:
            kind = "a whole number >= 0" if key in _INT_KEYS else "text" if key in _STR_KEYS else "a mapping"
            raise ClusterConfigError(f"{path}: '{where}.{key}' must be {kind}, got {value!r}")
    return res


def load_cluster(path: str | Path) -> ClusterConfig:
    p = Path(path)
    if not p.is_file():
        raise ClusterConfigError(f"{p}: cluster config not found")
    data = yaml.safe_load(p.read_text()) or {}
    unknown = set(data) - {"executor", "defaults", "kinds", "stages"}
    if unknown:
        raise ClusterConfigError(f"{p}: unknown key '{sorted(unknown)[0]}'")
    executor = data.get("executor", "local")
    if executor not in EXECUTORS:
        raise ClusterConfigError(f"{p}: 'executor' must be one of {EXECUTORS}, got {executor!r}")
    defaults = _check_resources(str(p), "defaults", data.get("defaults", {}))
    kinds = {k: _check_resources(str(p), f"kinds.{k}", v) for k, v in (data.get("kinds") or {}).items()}
    stages = {k: _check_resources(str(p), f"stages.{k}", v) for k, v in (data.get("stages") or {}).items()}
    return ClusterConfig(str(p), executor, defaults, kinds, stages)
