"""Deterministic, resumable batches.

Every sample is a pure function of ``(seed, global sample number)``: which pool it comes from, which
image, and the seed of its augmentation. Resuming at iteration ``k`` therefore needs no sampler
state, works with any number of data-loader workers, and gives the same batches as an uninterrupted
run. Under DDP rank ``r`` takes the ``r``-th slice of each global batch, so no image is shared.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def sample_key(seed: int, g: int, pool_sizes: Sequence[int], extra_probability: float) -> tuple[int, int, int]:
    """The ``g``-th sample of the run. Pool 0 is walked in per-epoch permutations; a sample is taken
    from pool 1 (coarse / auto-labelled) with probability ``extra_probability`` (section 5.1.1)."""
    rng = _rng(seed, g, 1)
    aug_seed = int(rng.integers(0, 2**31 - 1))
    if len(pool_sizes) > 1 and rng.random() < extra_probability:
        return 1, int(rng.integers(pool_sizes[1])), aug_seed
    n = pool_sizes[0]
    epoch, pos = divmod(g, n)
    return 0, int(_rng(seed, epoch, 0).permutation(n)[pos]), aug_seed


class IterationBatches:
    """Batch sampler over iterations ``start..total``: yields lists of sample keys for this rank."""

    def __init__(self, seed: int, pool_sizes: Sequence[int], extra_probability: float, batch_size: int,
                 start: int, total: int, rank: int = 0, world_size: int = 1) -> None:
        if pool_sizes[0] == 0:
            raise ValueError("training pool is empty")
        self.seed, self.pool_sizes, self.p = seed, list(pool_sizes), extra_probability
        self.bs, self.start, self.total, self.rank, self.world = batch_size, start, total, rank, world_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for it in range(self.start, self.total):
            base = (it * self.world + self.rank) * self.bs
            yield [sample_key(self.seed, base + k, self.pool_sizes, self.p) for k in range(self.bs)]


class PooledDataset(Dataset):
    """Indexes several datasets by ``(pool, idx, seed)`` and seeds the augmentation per sample."""

    def __init__(self, pools: Sequence[Dataset]) -> None:
        self.pools = list(pools)

    def __len__(self) -> int:
        return sum(len(p) for p in self.pools)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        pool, idx, seed = key
        # torchvision's random transforms draw from torch's global RNG: fixing it per sample makes
        # the augmentation independent of worker count and of where the run resumed.
        torch.manual_seed(seed)
        return self.pools[pool][idx]
