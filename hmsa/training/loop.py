"""The training loop (section 5.1): SGD + poly LR per iteration, multi-scale training forward,
auxiliary loss, DDP, mixed precision and SyncBN on CUDA, atomic checkpoints, resume from the run
directory by default, and a save-and-stop on request (``STOP_REQUESTED``, for preemption)."""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from hmsa import config as cfgmod
from hmsa.io import atomic_write_json
from hmsa.orchestration import runlock
from hmsa.tracking import ENV_RUN_ID, StageTracker
from hmsa.training import checkpoint, curves, distributed, optim, precision, state
from hmsa.training.batches import IterationBatches, PooledDataset
from hmsa.training.losses import total_loss
from hmsa.training.precision import Precision
from hmsa.training.state import run_key

log = logging.getLogger("hmsa.train")

# Set by the job (from another thread, e.g. submitit's ``checkpoint()`` on preemption) to ask the
# training to save ``last.pt`` at the next iteration boundary and stop by raising ``Preempted``.
# The loop clears it when it acts on it.
STOP_REQUESTED = threading.Event()


class Preempted(RuntimeError):
    """The run stopped early on request; ``last.pt`` holds ``iteration`` and resumes it."""

    def __init__(self, iteration: int, path: Path) -> None:
        super().__init__(f"training stopped on request at iteration {iteration}; checkpoint {path}")
        self.iteration, self.path = iteration, path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """Data-loader ``worker_init_fn``: Python and NumPy seeded from the worker's torch seed (which the
    loader derives from its seeded generator); torch alone does not seed them."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _cap(ds: Dataset, n: int) -> Dataset:
    return Subset(ds, range(min(n, len(ds)))) if n > 0 else ds  # type: ignore[arg-type]


def build_pools(cfg: cfgmod.Config) -> tuple[list[Dataset], int, list[str]]:
    """The main training pool and, when configured, the coarse / auto-labelled pool."""
    from hmsa.data import build_dataset
    from hmsa.data.transforms import train_transform

    d = cfg.data
    tf = train_transform(tuple(d.crop), tuple(d.scale_range), d.hflip, d.color_jitter, d.blur_prob)
    root = Path(d.root)
    main = build_dataset(d.dataset, root, d.train_split, transform=tf)
    num_classes, names = main.num_classes, list(main.class_names)
    if d.train_includes_val:
        main = ConcatDataset([main, build_dataset(d.dataset, root, d.val_split, transform=tf)])
    pools = [_cap(main, d.max_images)]
    if d.extra_pool != "none":  # Cityscapes only (hmsa.config.validate)
        kw: dict[str, Any] = {"labels": d.extra_pool, "transform": tf}
        if d.extra_pool == "autolabel":
            # a path the pipeline gives as an override, so an experiment file alone may lack it
            if not d.extra_pool_root:
                raise cfgmod.ConfigError("data.extra_pool_root: required when data.extra_pool is 'autolabel'")
            kw["label_root"] = Path(d.extra_pool_root)
        pools.append(_cap(build_dataset("cityscapes", root, "train_extra", **kw), d.max_images))
    return pools, num_classes, names


def pool_centroids(cfg: cfgmod.Config, pools: list[Dataset], run_dir: Path) -> list[dict | None]:
    """Class-uniform centroid tables, one per pool (cached by label content; see hmsa.data.sampling)."""
    from hmsa.data.sampling import cached_centroids
    from hmsa.training.batches import resolve

    d = cfg.data
    if d.class_uniform_fraction <= 0:
        return [None] * len(pools)
    cache = Path(d.centroid_cache) if d.centroid_cache else Path(run_dir).resolve().parent / "centroids"
    tables: list[dict | None] = []
    for pool in pools:
        bases = [resolve(pool, j) for j in range(len(pool))]  # type: ignore[arg-type]
        files = [base.items[i][1] for base, i in bases]
        base = bases[0][0]
        tables.append(cached_centroids(files, base.lut, base.num_classes, d.class_uniform_tile, cache,
                                      valid=base.valid))
    return tables


class _TrainForward(nn.Module):
    """Wraps the multi-scale training forward so DDP sees one forward per backward."""

    def __init__(self, model: nn.Module, method: str, scales: list[float], bn_stats: str) -> None:
        super().__init__()
        self.model, self.method, self.scales, self.bn_stats = model, method, scales, bn_stats

    def forward(self, images: torch.Tensor) -> dict:
        from hmsa.models.multiscale import forward_train

        return forward_train(self.model, images, self.method, self.scales, self.bn_stats)


def _build(cfg: cfgmod.Config, num_classes: int, device: torch.device) -> nn.Module:
    from hmsa.models import build_model

    m = cfg.model
    return build_model(m.name, num_classes, pretrained=m.pretrained, weights=m.weights or None,
                       attention=m.attention, explicit_scales=cfgmod.explicit_scales(cfg)).to(device)


def model_meta(cfg: cfgmod.Config, num_classes: int, names: list[str], run_id: str = "",
               run_dir: Path | None = None) -> dict[str, Any]:
    """What the model file says it is (checked by every reader, ``hmsa.model_file``) and who made it."""
    from hmsa.tracking import ENV_STAGE

    return {"name": cfg.model.name, "num_classes": num_classes, "attention": cfg.model.attention,
            "dataset": cfg.data.dataset, "class_names": names, "train_method": cfg.train.method,
            "explicit_scales": list(cfgmod.explicit_scales(cfg) or []),
            "config_hash": cfgmod.config_hash(cfg), "stage": os.environ.get(ENV_STAGE, ""),
            "mlflow_run_id": run_id, "run_dir": str(Path(run_dir).resolve()) if run_dir else ""}


@dataclass
class _Run:
    """The objects one training run threads through its loop."""

    cfg: cfgmod.Config
    model: nn.Module
    opt: torch.optim.Optimizer
    precision: Precision
    dist: distributed.DistInfo
    run_dir: Path
    key: str
    tracker: StageTracker
    window: list[float]  # [sum, count] of the total loss since the last logged point (kept in last.pt)

    def save(self, iteration: int) -> None:
        """``last.pt`` from rank 0 (every rank holds the same weights under DDP)."""
        if self.dist.is_main:
            checkpoint.save(state.training_state(self.model, self.opt, self.precision, iteration, self.key,
                                                 self.tracker.run_id or "", self.window),
                            checkpoint.last_path(self.run_dir))
            log.info("rank %d saved the checkpoint of iteration %d", self.dist.rank, iteration)


def _read_init(cfg: cfgmod.Config) -> dict[str, torch.Tensor] | None:
    """The ``model.init`` weights, checked up front: a model file, of this run's architecture."""
    from hmsa import model_file

    if not cfg.model.init:
        return None
    weights, meta = model_file.read(Path(cfg.model.init))
    model_file.check_init(Path(cfg.model.init), meta, cfg.model.name)
    return weights


def _init_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: str) -> None:
    skipped = checkpoint.load_matching(model, weights)
    log.info("initialised from %s; not transferred: %d tensors (%s...)", path, len(skipped), skipped[:3])


def _tracker(saved: dict[str, Any] | None) -> StageTracker:
    """The stage's run (handed over by ``hmsa submit``); for a standalone ``hmsa train`` that resumes,
    the run its checkpoint was logging to, when the tracking store still has it; else a new run."""
    previous = str((saved or {}).get("mlflow_run_id") or "")
    if previous and not os.environ.get(ENV_RUN_ID) and os.environ.get("HMSA_TRACKING", "1") != "0":
        try:
            from hmsa.tracking import mlflow_client

            mlflow_client().get_run(previous)
        except Exception:  # noqa: BLE001 - another store, a deleted run, an outage: start a new run
            log.warning("MLflow run %s of the checkpoint not found: logging to a new run", previous)
        else:
            tracker = StageTracker(previous)
            tracker.owned = True  # standalone: this process ends the run, as if it had created it
            return tracker
    return StageTracker.from_env()


def run_training(cfg: cfgmod.Config, run_dir: Path, out_model: Path | None = None,
                 out_metrics: Path | None = None, resume: bool = True) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; export the final model and a metrics JSON.

    Raises ``Preempted`` (after saving ``last.pt``) when ``STOP_REQUESTED`` is set during training."""
    dist = distributed.init_from_env()
    run_dir = Path(run_dir)
    lock, failure = None, None
    if dist.is_main:
        try:
            state.check_outputs(run_dir, out_model, out_metrics)
            # One process at a time in a run dir (on any host): two would mix checkpoints and records.
            lock = runlock.acquire(run_dir)
        except Exception as exc:  # noqa: BLE001 - raised below, on every rank together
            failure = exc
    distributed.raise_together(failure, dist.device)
    try:
        return _train(cfg, run_dir, dist, out_model, out_metrics, resume)
    finally:
        if lock is not None:
            runlock.release(run_dir, lock)


def _train(cfg: cfgmod.Config, run_dir: Path, dist: distributed.DistInfo, out_model: Path | None,
           out_metrics: Path | None, resume: bool) -> dict[str, Any]:
    init = _read_init(cfg)
    seed_everything(cfg.seed)
    pools, num_classes, names = build_pools(cfg)
    model, sync_bn = precision.maybe_sync_bn(_build(cfg, num_classes, dist.device), cfg.train.sync_bn,
                                            dist.device, dist.world_size)
    prec = precision.build_precision(cfg.train.amp, dist.device)
    key = run_key(cfg)
    saved = state.load_for_resume(run_dir, key, resume, dist)
    opt = optim.build_sgd(model, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay)
    start = 0
    if saved is not None:
        start = state.restore(saved, model, opt, prec, checkpoint.last_path(run_dir))
    elif init is not None:
        _init_weights(model, init, cfg.model.init)
    tracker = _tracker(saved)
    if dist.is_main:
        cfgmod.dump(cfg, run_dir / "config.yaml")
        tracker.log_params(cfgmod.flatten(cfgmod.to_dict(cfg)))
        # The config hash and the git tags come from `stage_provenance` / run creation, once.
        tracker.set_tags({"hmsa.run_dir": str(run_dir.resolve()), "hmsa.amp": str(prec.active),
                          "hmsa.sync_bn": str(sync_bn)})
    t0 = time.time()
    centroids = pool_centroids(cfg, pools, run_dir)
    # A run preempted between two logged points resumes its window, so the curve matches an unbroken run.
    window = [float(v) for v in (saved or {}).get("loss_window", (0.0, 0))]
    run = _Run(cfg, model, opt, prec, dist, run_dir, key, tracker, window)
    try:
        _loop(run, pools, centroids, start)
    except Preempted:
        if tracker.owned:  # a stage run stays open for the requeued job; a standalone one ends KILLED
            tracker.finish("KILLED")
        tracker.flush()
        distributed.shutdown()
        raise
    seconds = time.time() - t0
    result = {"iterations": cfg.train.iterations, "resumed_from": start, "train_seconds": round(seconds, 2),
              "mlflow_run_id": tracker.resolved_id(wait=None), "config_hash": cfgmod.config_hash(cfg),
              "amp": prec.active, "sync_bn": sync_bn}
    if dist.world_size > 1:
        log.info("rank %d of %d: parameters sha256 %s", dist.rank, dist.world_size,
                 distributed.parameters_digest(model))
    if dist.is_main:
        if out_model is not None:
            meta = model_meta(cfg, num_classes, names, result["mlflow_run_id"], run_dir)
            checkpoint.save({"model": model.state_dict(), "meta": meta}, Path(out_model))
        if out_metrics is not None:
            curves.export(run_dir, Path(out_metrics).parent / curves.FILE, cfg.train.iterations)
            atomic_write_json(Path(out_metrics), result)
        tracker.close()
    distributed.shutdown()
    return result


def _loader(cfg: cfgmod.Config, pools: list[Dataset], centroids: list[dict | None], start: int,
            dist: distributed.DistInfo) -> DataLoader:
    batches = IterationBatches(cfg.seed, [len(p) for p in pools], cfg.data.extra_pool_probability,
                               cfg.train.batch_size, start, cfg.train.iterations, dist.rank, dist.world_size,
                               centroids, cfg.data.class_uniform_fraction)
    # The generator fixes the workers' base seed (otherwise drawn from the global RNG, which would make
    # the main process's random stream depend on the worker count).
    return DataLoader(PooledDataset(pools), batch_sampler=batches, num_workers=cfg.data.num_workers,
                      worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(cfg.seed))


def _step(run: _Run, fwd: nn.Module, batch: dict, it: int) -> dict[str, float]:
    t = run.cfg.train
    optim.set_lr(run.opt, optim.poly_lr(t.lr, it, t.iterations, t.poly_power, t.warmup_iterations))
    images = batch["image"].to(run.dist.device, non_blocking=True)
    target = batch["label"].to(run.dist.device, non_blocking=True)
    with run.precision.autocast():
        out = fwd(images)
    # The loss runs in float32 outside autocast (RMI needs float64 for its covariances anyway).
    out = {k: _as_float(v) for k, v in out.items()}
    loss, terms = total_loss(out, target, t.loss, t.aux_weight, t.scale_supervision_weight)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at iteration {it}: {terms}")
    run.opt.zero_grad(set_to_none=True)
    run.precision.backward_step(loss, run.opt)
    return terms


def _as_float(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.float()
    if isinstance(v, dict):
        return {k: _as_float(x) for k, x in v.items()}
    return v


def _loop(run: _Run, pools: list[Dataset], centroids: list[dict | None], start: int) -> None:
    cfg, dist, t = run.cfg, run.dist, run.cfg.train
    total = t.iterations
    if start >= total:
        return
    loader = _loader(cfg, pools, centroids, start, dist)
    fwd: nn.Module = _TrainForward(run.model, t.method, t.scales, t.bn_stats)
    if dist.world_size > 1:
        fwd = nn.parallel.DistributedDataParallel(fwd, find_unused_parameters=True)
    run.model.train()
    meter = _Meter(time.time(), 0)
    bar = _progress(start, total, dist.is_main)
    try:
        for it, batch in zip(range(start, total), loader, strict=True):
            terms = _step(run, fwd, batch, it)
            done = it + 1
            meter.images += batch["image"].shape[0] * dist.world_size
            run.window[0] += terms["loss/total"]
            run.window[1] += 1
            if bar is not None:  # postfix first without a redraw: update() redraws at most every 0.5 s
                bar.set_postfix(loss=f"{terms['loss/total']:.3f}", lr=f"{run.opt.param_groups[0]['lr']:.2e}",
                                refresh=False)
                bar.update(1)
            if dist.is_main and (done % t.log_every == 0 or done == total):
                _log(run, meter, terms, done, quiet=bar is not None)
            periodic = done % t.checkpoint_every == 0 or done == total
            if periodic:
                run.save(done)
            if done < total and _stop_requested(dist):
                if not periodic:
                    run.save(done)
                distributed.barrier()
                STOP_REQUESTED.clear()  # consumed: a later run in this process starts normally
                raise Preempted(done, checkpoint.last_path(run.run_dir))
    finally:
        if bar is not None:
            bar.close()


@dataclass
class _Meter:
    tick: float
    images: int


def _log(run: _Run, meter: _Meter, terms: dict[str, float], done: int, quiet: bool = False) -> None:
    """MLflow metrics, and a log line unless the progress bar already shows it (``quiet``).

    ``loss/total`` is the last batch's; ``loss/window_mean`` (and ``curves.csv``) the mean over every batch
    since the previous point. One small batch's loss swings with the images drawn (under RMI by ~10 %),
    so a curve of single batches cannot show whether training has flattened; a mean over the window can.
    """
    total, lr = run.cfg.train.iterations, run.opt.param_groups[0]["lr"]
    mean = run.window[0] / max(run.window[1], 1)
    rate = meter.images / max(time.time() - meter.tick, 1e-9)
    eta = (total - done) * run.cfg.train.batch_size * run.dist.world_size / max(rate, 1e-9)
    log.log(logging.DEBUG if quiet else logging.INFO, "it %d/%d  loss %.4f  lr %.5f  %.1f img/s  eta %ds",
            done, total, mean, lr, rate, eta)
    run.tracker.log_metrics({**terms, "loss/window_mean": mean, "lr": lr, "images_per_s": rate,
                             "memory/peak_mb": _peak_memory_mb(run.dist.device)}, step=done)
    curves.append(run.run_dir, done, mean, lr)
    meter.tick, meter.images = time.time(), 0
    run.window[:] = [0.0, 0]


def _stop_requested(dist: distributed.DistInfo) -> bool:
    """Whether any rank was asked to stop. submitit signals only rank 0, and every rank must stop at
    the same iteration (a rank that goes on would wait forever in the next gradient all-reduce)."""
    flag = STOP_REQUESTED.is_set()
    if dist.world_size > 1:
        t = torch.tensor([int(flag)], device=dist.device)
        distributed.all_reduce_sum(t)
        flag = bool(t.item() > 0)
    return flag


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _progress(start: int, total: int, main: bool) -> Any:
    """A progress bar (iterations, it/s, ETA, loss) on a terminal; log lines only otherwise."""
    if not (main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    # tqdm hides a bar that does not fit the terminal's height, and a pty with no size set (script,
    # docker exec) reports 0 rows: shutil falls back to 24 rows there.
    rows = shutil.get_terminal_size().lines
    return tqdm(total=total, initial=start, unit="it", file=sys.stderr, ncols=100, nrows=max(rows, 2),
                mininterval=0.5)
