"""Deterministic, resumable batches.

Every sample is a pure function of ``(seed, global sample number)``: which pool it comes from, which
image, and the seed of its augmentation. Resuming at iteration ``k`` therefore needs no sampler
state, works with any number of data-loader workers, and gives the same batches as an uninterrupted
run. Under DDP rank ``r`` takes the ``r``-th slice of each global batch, so no image is shared.
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from hmsa.data.sampling import draw


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


Key = tuple[int, int, int, int, int]  # (pool, image index, augmentation seed, centroid y, centroid x)


def sample_key(seed: int, g: int, pool_sizes: Sequence[int], extra_probability: float,
               centroids: Sequence[dict | None] = (), class_uniform: float = 0.0) -> Key:
    """The ``g``-th sample of the run. A sample comes from pool 1 (coarse / auto-labelled) with
    probability ``extra_probability`` (section 5.1.1); with probability ``class_uniform`` it is a
    class-uniform draw (a class, then one of its centroids: the crop is placed around it); otherwise
    pool 0 is walked in per-epoch permutations and pool 1 drawn uniformly. Centroid -1 = none."""
    rng = _rng(seed, g, 1)
    aug_seed = int(rng.integers(0, 2**31 - 1))
    pool = 1 if len(pool_sizes) > 1 and rng.random() < extra_probability else 0
    table = centroids[pool] if pool < len(centroids) else None
    if table and rng.random() < class_uniform:
        hit = draw(rng, table)
        if hit is not None:
            return pool, hit[0], aug_seed, hit[1], hit[2]
    if pool == 1:
        return 1, int(rng.integers(pool_sizes[1])), aug_seed, -1, -1
    n = pool_sizes[0]
    epoch, pos = divmod(g, n)
    return 0, int(_epoch_order(seed, epoch, n)[pos]), aug_seed, -1, -1


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The epoch's permutation, computed once per epoch instead of once per sample."""
    return _rng(seed, epoch, 0).permutation(n)


class IterationBatches:
    """Batch sampler over iterations ``start..total``: yields lists of sample keys for this rank."""

    def __init__(self, seed: int, pool_sizes: Sequence[int], extra_probability: float, batch_size: int,
                 start: int, total: int, rank: int = 0, world_size: int = 1,
                 centroids: Sequence[dict | None] = (), class_uniform: float = 0.0) -> None:
        if pool_sizes[0] == 0:
            raise ValueError("training pool is empty")
        self.seed, self.pool_sizes, self.p = seed, list(pool_sizes), extra_probability
        self.centroids, self.class_uniform = list(centroids), class_uniform
        self.bs, self.start, self.total, self.rank, self.world = batch_size, start, total, rank, world_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[Key]]:
        for it in range(self.start, self.total):
            base = (it * self.world + self.rank) * self.bs
            yield [sample_key(self.seed, base + k, self.pool_sizes, self.p, self.centroids, self.class_uniform)
                   for k in range(self.bs)]


def resolve(ds: Dataset, idx: int) -> tuple[Dataset, int]:
    """Unwrap Subset / ConcatDataset down to the dataset that holds the file."""
    while True:
        if isinstance(ds, Subset):
            ds, idx = ds.dataset, ds.indices[idx]
        elif isinstance(ds, ConcatDataset):
            part = bisect.bisect_right(ds.cumulative_sizes, idx)
            idx -= ds.cumulative_sizes[part - 1] if part else 0
            ds = ds.datasets[part]
        else:
            return ds, idx


class PooledDataset(Dataset):
    """Indexes several datasets by sample keys and seeds the augmentation per sample."""

    def __init__(self, pools: Sequence[Dataset]) -> None:
        self.pools = list(pools)

    def __len__(self) -> int:
        return sum(len(p) for p in self.pools)  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> dict:
        pool, idx, seed, cy, cx = key
        # torchvision's random transforms draw from torch's global RNG: fixing it per sample makes
        # the augmentation independent of worker count and of where the run resumed. Python's and
        # NumPy's too, for any transform that uses them.
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        base, i = resolve(self.pools[pool], idx)
        image, label = base.load(i)  # type: ignore[attr-defined]
        img, lab = base.transform(image, label, None if cy < 0 else (cy, cx))  # type: ignore[attr-defined]
        return {"image": img, "label": lab, "name": base.items[i][2]}  # type: ignore[attr-defined]
