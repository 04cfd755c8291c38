"""What a training checkpoint holds, and how a run is put back exactly where it stopped.

``last.pt`` holds the model, the optimizer (momentum buffers), the AMP gradient scaler, the iteration,
the RNG states of this process (Python, NumPy, torch CPU and every CUDA device), the run key and the
MLflow run id. Two things need no state of their own: the learning rate is a pure function of the
iteration (poly schedule), and the batches are a pure function of (seed, sample number)
(``hmsa.training.batches``), so the iteration is the sampler position. Everything is made of tensors
and plain Python values, so ``torch.load(..., weights_only=True)`` reads it. A checkpoint is resumed
only when its run key (resolved config + init weights) matches; otherwise it is set aside.
There is no ``best`` checkpoint: training does not evaluate (the evaluate stages do).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hmsa import config as cfgmod
from hmsa.errors import BadInputError
from hmsa.io import file_sha256
from hmsa.training import checkpoint, distributed
from hmsa.training.precision import Precision

log = logging.getLogger("hmsa.train")

KEYS = ("model", "optimizer", "scaler", "iteration", "rng", "run_key", "mlflow_run_id", "loss_window")


def rng_state() -> dict[str, Any]:
    """This process's RNG states as weights-only-loadable values (NumPy's key array as a tensor)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate wants tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    # A checkpoint from another machine may name more or fewer devices: restore what exists.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision, iteration: int,
                   run_key: str, mlflow_run_id: str, loss_window: list[float]) -> dict[str, Any]:
    """The content of ``last.pt`` (periodic, final and preemption checkpoints alike). ``loss_window``:
    [sum, count] of the losses since the last logged point, so a resumed run logs the same curve."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": precision.state_dict(),
            "iteration": iteration, "rng": rng_state(), "run_key": run_key, "mlflow_run_id": mlflow_run_id,
            "loss_window": list(loss_window)}


def restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            precision: Precision, path: Path | str = "last.pt") -> int:
    """Load a ``training_state`` into the objects of a fresh run; returns the iteration to start at."""
    from hmsa.model_file import weight_mismatch

    wrong = weight_mismatch(model, state["model"])
    if wrong:  # same run key yet other shapes: the file was swapped or the code changed under it
        raise BadInputError(f"{path}: checkpoint does not fit this run's model ({wrong}); "
                         "`hmsa train --no-resume` sets it aside and starts over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    precision.load_state_dict(state.get("scaler") or {})
    if state.get("rng"):
        set_rng_state(state["rng"])
    return int(state["iteration"])



def run_key(cfg: cfgmod.Config) -> str:
    """What a checkpoint must match to be resumed: the resolved config and the init weights' content.
    A stale run dir (config or upstream model changed) is set aside, never silently continued."""
    blob: dict[str, Any] = {"config": cfgmod.to_dict(cfg)}
    if cfg.model.init:
        blob["init"] = file_sha256(Path(cfg.model.init))
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _resume_or_set_aside(run_dir: Path, key: str, resume: bool) -> dict | None:
    """The checkpoint to resume, or None after moving the run dir's checkpoints aside. ``--no-resume``
    is decided before ``last.pt`` is read: it is the way to start over from a corrupt one."""
    last = checkpoint.last_path(run_dir)
    if not last.exists():
        return None
    state = None
    if resume:
        try:
            state = checkpoint.load(last)
        except ValueError as exc:
            raise BadInputError(f"{exc}; `hmsa train --no-resume` sets it aside and starts over") from exc
        if not isinstance(state, dict):
            raise BadInputError(f"{last}: not a training checkpoint; `hmsa train --no-resume` sets it aside")
        if state.get("run_key") == key:
            missing = [k for k in ("model", "optimizer", "iteration") if k not in state]
            if missing:
                raise BadInputError(f"{last}: training checkpoint without {', '.join(missing)}; "
                                 "`hmsa train --no-resume` sets it aside and starts over")
            return state
    stale = run_dir / f"checkpoints.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    while stale.exists():  # two set-asides within a second must not nest one into the other
        stale = stale.with_name(stale.name + "+")
    log.warning("setting aside %s (%s)", last.parent, "--no-resume" if not resume else "config changed")
    shutil.move(str(last.parent), stale)
    return None


def load_for_resume(run_dir: Path, key: str, resume: bool, dist: distributed.DistInfo) -> dict | None:
    """Rank 0 decides whether the run dir's checkpoint is resumed; the other ranks read what it kept."""
    saved = _resume_or_set_aside(run_dir, key, resume) if dist.is_main else None
    distributed.barrier()
    if dist.world_size > 1 and not dist.is_main:
        last = checkpoint.last_path(run_dir)
        saved = checkpoint.load(last) if last.exists() else None
    return saved


def check_outputs(run_dir: Path, out_model: Path | None, out_metrics: Path | None) -> None:
    """Before hours of training: every output can be written (not a directory, not a read-only disk),
    and the temp files of a killed earlier run are gone."""
    from hmsa.io import check_output, check_writable_dir, clean_tmp
    from hmsa.training import curves

    check_writable_dir(run_dir)
    for path, what in ((out_model, "--out-model"), (out_metrics, "--out-metrics")):
        if path is not None:
            check_output(Path(path), what)
            clean_tmp(Path(path).parent)
    if out_metrics is not None:
        check_output(Path(out_metrics).parent / curves.FILE, "the curves file")
    for d in (run_dir, checkpoint.last_path(run_dir).parent):
        clean_tmp(d)
