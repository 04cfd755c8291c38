"""Two processes through submitit's local executor (tasks_per_node: 2, gloo on CPU): DDP training
runs on both ranks, and a distributed evaluation counts every image exactly once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from hmsa import config
from hmsa.models.multiscale import forward_train
from hmsa.orchestration.launch import submit
from hmsa.training import checkpoint, loop, optim
from hmsa.training.batches import IterationBatches, PooledDataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_two_rank_training_and_evaluation(embedded_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_TRACKING", "0")
    cluster = tmp_path / "two.yaml"
    cluster.write_text("executor: local\ndefaults: {timeout_min: 10, tasks_per_node: 2, cpus_per_task: 1}\n")
    root = f"data.root={embedded_data / 'cityscapes'}"
    code = submit("ddp_train", "train", tmp_path / "run", cluster,
                  ["train", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--run-dir",
                   str(tmp_path / "run"), "--out-model", str(tmp_path / "m.pt"), root])
    assert code == 0
    logs = sorted((tmp_path / "run/submitit").rglob("*_log.out"))
    assert len(logs) == 2  # one task per rank
    code = submit("ddp_eval", "evaluate", tmp_path / "eval_run", cluster,
                  ["evaluate", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model",
                   str(tmp_path / "m.pt"), "--out-dir", str(tmp_path / "eval"), "--setting", "single:1",
                   root, "eval.max_images=0"])
    assert code == 0
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["images"] == 2  # the val split, split across 2 ranks, each image once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _oracle(cfg: config.Config, cache: Path, rank_batches: list[int]) -> dict[str, torch.Tensor]:
    """One process doing by hand what 2-rank DDP should: per iteration, each rank's own batch through
    the model (BatchNorm sees one rank's batch, as without SyncBN), the mean of the ranks' gradients,
    one SGD step. ``rank_batches`` says whose samples each of the two micro-batches holds."""
    t = cfg.train
    loop.seed_everything(cfg.seed)  # the same initial weights as run_training
    pools, num_classes, _ = loop.build_pools(cfg)
    model = loop._build(cfg, num_classes, torch.device("cpu"))
    opt = optim.build_sgd(model, t.lr, t.momentum, t.weight_decay)
    centroids = loop.pool_centroids(cfg, pools, cache / "run")
    ds = PooledDataset(pools)
    model.train()
    for it in range(t.iterations):
        optim.set_lr(opt, optim.poly_lr(t.lr, it, t.iterations, t.poly_power, t.warmup_iterations))
        opt.zero_grad(set_to_none=True)
        for rank in rank_batches:
            (keys,) = IterationBatches(cfg.seed, [len(p) for p in pools], cfg.data.extra_pool_probability,
                                       t.batch_size, it, it + 1, rank, 2, centroids, cfg.data.class_uniform_fraction)
            batch = default_collate([ds[k] for k in keys])
            out = forward_train(model, batch["image"], t.method, t.scales)
            loss, _ = loop.total_loss(out, batch["label"], t.loss, t.aux_weight, t.scale_supervision_weight)
            (loss / len(rank_batches)).backward()
        opt.step()
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def test_two_ranks_see_distinct_samples_and_match_one_process(embedded_data: Path, tmp_path: Path) -> None:
    """2 gloo processes (`hmsa train` with RANK/WORLD_SIZE, as torchrun or submitit export them), batch 2
    each (batch 1 fails in the pooled BatchNorm without SyncBN), against one process stepping on both
    ranks' samples: equal within float tolerance; and not equal to one process that gives both ranks
    rank 0's samples (so the ranks did see distinct ones)."""
    # Rank slices of a global batch: disjoint, and together the 1-process batch of the same size.
    r0, r1 = (list(IterationBatches(0, [8], 0.0, 1, 0, 3, r, 2)) for r in (0, 1))
    single = list(IterationBatches(0, [8], 0.0, 2, 0, 3))
    assert all(a + b == s and a != b for a, b, s in zip(r0, r1, single, strict=True))

    tiny = ROOT / "configs/experiments/tiny.yaml"
    args = [f"data.root={embedded_data / 'cityscapes'}", "train.batch_size=2", "train.iterations=3",
            f"data.centroid_cache={tmp_path / 'centroids'}"]
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "HMSA_TRACKING": "0"}
        cmd = [sys.executable, "-m", "hmsa", "train", "--config", str(tiny), "--run-dir", str(tmp_path / "ddp"),
               "--out-model", str(tmp_path / "ddp.pt"), *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ddp, _ = checkpoint.load_model_file(tmp_path / "ddp.pt")

    cfg = config.load(tiny, args)
    # The ranks ran with one thread each: so does the oracle (another thread count sums in another order,
    # and three SGD steps of a tiny net amplify that far beyond any tolerance).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        same = _oracle(cfg, tmp_path, [0, 1])
        wrong = _oracle(cfg, tmp_path, [0, 0])
    finally:
        torch.set_num_threads(threads)
    diff = max(float((ddp[k] - same[k]).abs().max()) for k in same)
    diff_wrong = max(float((ddp[k] - wrong[k]).abs().max()) for k in same)
    assert diff < 1e-5, diff
    assert diff_wrong > 100 * max(diff, 1e-7), (diff, diff_wrong)
