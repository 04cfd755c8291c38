"""The training loop (section 5.1): SGD + poly LR per iteration, multi-scale training forward,
auxiliary loss, DDP, atomic checkpoints, resume from the run directory by default."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from hmsa import config as cfgmod
from hmsa.io import atomic_write_json
from hmsa.tracking import StageTracker, git_commit
from hmsa.training import checkpoint, distributed, optim
from hmsa.training.batches import IterationBatches, PooledDataset
from hmsa.training.losses import total_loss

log = logging.getLogger("hmsa.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    if d.extra_pool != "none":
        if d.dataset != "cityscapes":
            raise ValueError("data.extra_pool: only Cityscapes has a coarse pool")
        kw: dict[str, Any] = {"labels": d.extra_pool, "transform": tf}
        if d.extra_pool == "autolabel":
            if not d.extra_pool_root:
                raise ValueError("data.extra_pool_root: required when data.extra_pool is 'autolabel'")
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
        tables.append(cached_centroids(files, base.lut, base.num_classes, d.class_uniform_tile, cache))
    return tables


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_key(cfg: cfgmod.Config) -> str:
    """What a checkpoint must match to be resumed: the resolved config and the init weights' content.
    A stale run dir (config or upstream model changed) is set aside, never silently continued."""
    blob: dict[str, Any] = {"config": cfgmod.to_dict(cfg)}
    if cfg.model.init:
        blob["init"] = _file_digest(Path(cfg.model.init))
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _resume_state(run_dir: Path, key: str, resume: bool) -> dict | None:
    last = checkpoint.last_path(run_dir)
    if not last.exists():
        return None
    state = checkpoint.load(last)
    if resume and state.get("run_key") == key:
        return state
    stale = run_dir / f"checkpoints.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    log.warning("setting aside %s (%s)", last.parent, "--no-resume" if not resume else "config changed")
    shutil.move(str(last.parent), stale)
    return None


class _TrainForward(nn.Module):
    """Wraps the multi-scale training forward so DDP sees one forward per backward."""

    def __init__(self, model: nn.Module, method: str, scales: list[float]) -> None:
        super().__init__()
        self.model, self.method, self.scales = model, method, scales

    def forward(self, images: torch.Tensor) -> dict:
        from hmsa.models.multiscale import forward_train

        return forward_train(self.model, images, self.method, self.scales)


def _build(cfg: cfgmod.Config, num_classes: int, device: torch.device) -> nn.Module:
    from hmsa.models import build_model

    m = cfg.model
    return build_model(m.name, num_classes, pretrained=m.pretrained, weights=m.weights or None,
                       attention=m.attention).to(device)


def model_meta(cfg: cfgmod.Config, num_classes: int, names: list[str]) -> dict[str, Any]:
    return {"name": cfg.model.name, "num_classes": num_classes, "attention": cfg.model.attention,
            "dataset": cfg.data.dataset, "class_names": names, "train_method": cfg.train.method,
            "config_hash": cfgmod.config_hash(cfg)}


def _save(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, it: int, key: str,
          tracker: StageTracker) -> None:
    checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                     "run_key": key, "mlflow_run_id": tracker.run_id or ""}, checkpoint.last_path(run_dir))


def _init_weights(model: nn.Module, path: str) -> None:
    weights, _ = checkpoint.load_model_file(Path(path))
    skipped = checkpoint.load_matching(model, weights)
    log.info("initialised from %s; not transferred: %d tensors (%s...)", path, len(skipped), skipped[:3])


def run_training(cfg: cfgmod.Config, run_dir: Path, out_model: Path | None = None,
                 out_metrics: Path | None = None, resume: bool = True) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; export the final model and a metrics JSON."""
    dist = distributed.init_from_env()
    run_dir = Path(run_dir)
    seed_everything(cfg.seed)
    pools, num_classes, names = build_pools(cfg)
    model = _build(cfg, num_classes, dist.device)
    key = run_key(cfg)
    state = _resume_state(run_dir, key, resume) if dist.is_main else None
    distributed.barrier()
    if dist.world_size > 1:  # non-zero ranks read what rank 0 decided to keep
        last = checkpoint.last_path(run_dir)
        state = checkpoint.load(last) if (last.exists() and not dist.is_main) else state
    opt = optim.build_sgd(model, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    elif cfg.model.init:
        _init_weights(model, cfg.model.init)
    start = int(state["iteration"]) if state else 0
    tracker = StageTracker.from_env()
    if dist.is_main:
        cfgmod.dump(cfg, run_dir / "config.yaml")
        tracker.log_params(cfgmod.flatten(cfgmod.to_dict(cfg)))
        tracker.set_tags({"hmsa.config_hash": cfgmod.config_hash(cfg), "hmsa.git_commit": git_commit(),
                          "hmsa.run_dir": str(run_dir.resolve())})
    t0 = time.time()
    centroids = pool_centroids(cfg, pools, run_dir)
    _loop(cfg, model, opt, pools, centroids, start, dist, run_dir, key, tracker)
    seconds = time.time() - t0
    result = {"iterations": cfg.train.iterations, "resumed_from": start, "train_seconds": round(seconds, 2),
              "mlflow_run_id": tracker.run_id or "", "config_hash": cfgmod.config_hash(cfg)}
    if dist.is_main:
        if out_model is not None:
            checkpoint.save({"model": model.state_dict(), "meta": model_meta(cfg, num_classes, names)},
                            Path(out_model))
        if out_metrics is not None:
            atomic_write_json(Path(out_metrics), result)
        tracker.close()
    distributed.shutdown()
    return result


def _loop(cfg: cfgmod.Config, model: nn.Module, opt: torch.optim.Optimizer, pools: list[Dataset],
          centroids: list[dict | None], start: int, dist: distributed.DistInfo, run_dir: Path, key: str,
          tracker: StageTracker) -> None:
    t = cfg.train
    total = t.iterations
    if start >= total:
        return
    batches = IterationBatches(cfg.seed, [len(p) for p in pools], cfg.data.extra_pool_probability,
                               t.batch_size, start, total, dist.rank, dist.world_size, centroids,
                               cfg.data.class_uniform_fraction)
    loader = DataLoader(PooledDataset(pools), batch_sampler=batches, num_workers=cfg.data.num_workers)
    fwd: nn.Module = _TrainForward(model, t.method, t.scales)
    if dist.world_size > 1:
        fwd = nn.parallel.DistributedDataParallel(fwd, find_unused_parameters=True)
    model.train()
    tick, images_seen = time.time(), 0
    bar = _progress(start, total, dist.is_main)
    for it, batch in zip(range(start, total), loader, strict=True):
        optim.set_lr(opt, optim.poly_lr(t.lr, it, total, t.poly_power, t.warmup_iterations))
        images = batch["image"].to(dist.device, non_blocking=True)
        target = batch["label"].to(dist.device, non_blocking=True)
        out = fwd(images)
        loss, terms = total_loss(out, target, t.loss, t.aux_weight, t.scale_supervision_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {it}: {terms}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images_seen += images.shape[0] * dist.world_size
        done = it + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss/total']:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        if dist.is_main and (done % t.log_every == 0 or done == total):
            rate = images_seen / max(time.time() - tick, 1e-9)
            eta = (total - done) * t.batch_size * dist.world_size / max(rate, 1e-9)
            log.info("it %d/%d  loss %.4f  lr %.5f  %.1f img/s  eta %ds", done, total, terms["loss/total"],
                     opt.param_groups[0]["lr"], rate, eta)
            tracker.log_metrics({**terms, "lr": opt.param_groups[0]["lr"], "images_per_s": rate,
                                 "memory/peak_mb": _peak_memory_mb(dist.device)}, step=done)
            tick, images_seen = time.time(), 0
        if dist.is_main and (done % t.checkpoint_every == 0 or done == total):
            _save(run_dir, model, opt, done, key, tracker)
    if bar is not None:
        bar.close()


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

    return tqdm(total=total, initial=start, unit="it", file=sys.stderr, ncols=100, mininterval=0.5)
