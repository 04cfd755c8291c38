"""Process-group set-up from the environment that submitit or torchrun export."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hmsa.errors import HmsaError

log = logging.getLogger("hmsa.distributed")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistInfo:
    """RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* as set by ``TorchDistributedEnvironment().export()``
    (submitit) or by torchrun. NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    set_threads()
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Every rank says where it runs and whom it met: across nodes, a wrong address or port shows
        # up here (and in the job's per-task logs) instead of as a silent hang.
        log.info("rank %d of %d on %s (local rank %d), rendezvous %s:%s, %s", rank, world, socket.gethostname(),
                 local, os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?"), backend)
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, device)


def parameters_digest(model: torch.nn.Module) -> str:
    """A short sha256 of the model's parameters, to compare ranks: under DDP they must be bitwise equal
    after every step. Buffers are left out: without SyncBN each rank's BatchNorm running statistics
    come from its own batches."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def set_threads() -> int:
    """torch's intra-op threads: a stage's job was given HMSA_NUM_THREADS (its CPUs per task, see
    hmsa/orchestration/launch.py), which overrides the OMP_NUM_THREADS it inherited; logged either way."""
    wanted = os.environ.get("HMSA_NUM_THREADS", "")
    if wanted.isdigit() and int(wanted) > 0 and torch.get_num_threads() != int(wanted):
        torch.set_num_threads(int(wanted))
    threads = torch.get_num_threads()
    log.info("torch threads: %d (OMP_NUM_THREADS=%s)", threads, os.environ.get("OMP_NUM_THREADS", "unset"))
    return threads


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def raise_together(exc: BaseException | None, device: torch.device) -> None:
    """Raise ``exc`` on its rank, and an error on every other rank: a rank that failed alone before a
    collective (a refused run dir, an unwritable output) would leave the others waiting forever."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        failed = all_reduce_sum(torch.tensor([int(exc is not None)], device=device))
        if exc is None and int(failed.item()) > 0:
            raise HmsaError("another rank could not start the run (its error is in its log)")
    if exc is not None:
        raise exc


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
