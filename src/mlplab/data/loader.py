"""Batches cut straight from in-memory tensors.

MNIST-sized data sets fit in memory many times over, so a ``DataLoader`` that indexes one sample
at a time and collates them back costs more than the model's arithmetic. ``TensorBatchLoader``
permutes indices once per epoch and slices whole batches (``index_select``), on whatever device
the tensors live (on a GPU the data never crosses the bus per step).

Lightning only injects a ``DistributedSampler`` into ``torch.utils.data.DataLoader``; for any
other iterable the data must shard itself. ``ShardedPermutation`` does what DistributedSampler
does (each rank a distinct, equally long part of every epoch, reshuffled per epoch from
``seed + epoch``) and exposes ``set_epoch``, which Lightning calls on ``loader.sampler``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
from torch import Tensor


class ShardedPermutation:
    """The sample indices one rank visits in one epoch.

    Args:
        num_samples: size of the whole split.
        shuffle: permute with a generator seeded by ``seed + epoch``; otherwise keep order.
        seed: base seed shared by all ranks, so they agree on the permutation.
        rank, world_size: this process's shard. Shuffled shards are padded by wrapping around
            (as DistributedSampler does) so every rank takes the same number of steps; ordered
            shards (evaluation) are contiguous and unpadded, so metrics count every sample once.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil(self.num_samples / self.world_size)
        start, stop = self.contiguous_range()
        return stop - start

    def contiguous_range(self) -> tuple[int, int]:
        """This rank's [start, stop) in an ordered (unshuffled) split."""
        per_rank = math.ceil(self.num_samples / self.world_size)
        start = min(self.rank * per_rank, self.num_samples)
        return start, min(start + per_rank, self.num_samples)

    def permutation(self) -> Tensor:
        """This rank's indices for the current epoch (shuffled splits only)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        total = len(self) * self.world_size
        if total > self.num_samples:
            order = torch.cat([order, order[: total - self.num_samples]])
        return order[self.rank : total : self.world_size]


class TensorBatchLoader:
    """Iterate over ``tensors`` (equal first dimension) in batches of ``batch_size``.

    Yields tuples of tensors (e.g. ``(images, labels)``); ordered loaders yield views (no copy).
    With ``group > 1`` it yields lists of up to ``group`` consecutive such batches instead (the
    same batches in the same order), so a LightningModule can take several optimizer steps per
    ``training_step`` call (see ``LitMLP.steps_per_call``); ``len()`` then counts groups.
    """

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group: int = 1,
    ) -> None:
        sizes = {len(t) for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"all tensors need the same first dimension, got {sorted(sizes)}")
        if batch_size <= 0 or group <= 0:
            raise ValueError(f"batch_size and group must be positive, got {batch_size} and {group}")
        self.tensors, self.batch_size, self.drop_last, self.group = tensors, batch_size, drop_last, group
        self.sampler = ShardedPermutation(sizes.pop(), shuffle, seed, rank, world_size)
        # Lightning inspects DataLoader-shaped objects through both attributes
        self.batch_sampler = None
        self.batches_served = 0  # individual batches handed out in the current epoch
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches) to skip once that epoch starts

    def state_dict(self) -> dict[str, int]:
        """Where the current epoch stands, saved in checkpoints so a resumed fit continues mid-epoch.

        Lightning fetches a sized loader's batches one at a time, without prefetching, so the
        batches served are exactly the batches trained on when a checkpoint is written.
        """
        return {"epoch": self.sampler.epoch, "batches_served": self.batches_served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches already trained on when that epoch's iteration starts (no effect on other epochs)."""
        self.resume_at = (int(state["epoch"]), int(state["batches_served"]))

    def num_batches(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.num_batches() / self.group)

    def __iter__(self) -> Iterator[tuple[Tensor, ...] | list[tuple[Tensor, ...]]]:
        if self.group == 1:
            yield from self.batches()
            return
        batches = self.batches()
        while chunk := list(itertools.islice(batches, self.group)):
            yield chunk

    def batches(self) -> Iterator[tuple[Tensor, ...]]:
        """The individual batches of one epoch."""
        stop = self.num_batches() * self.batch_size
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.sampler.epoch:
            skip = self.resume_at[1]
        self.resume_at, self.batches_served = None, skip
        if self.sampler.shuffle:
            order = self.sampler.permutation().to(self.tensors[0].device)
            for start in range(skip * self.batch_size, min(stop, len(order)), self.batch_size):
                index = order[start : start + self.batch_size]
                self.batches_served += 1
                yield tuple(t.index_select(0, index) for t in self.tensors)
        else:
            first, last = self.sampler.contiguous_range()
            for start in range(first + skip * self.batch_size, min(first + stop, last), self.batch_size):
                end = min(start + self.batch_size, last)
                self.batches_served += 1
                yield tuple(t[start:end] for t in self.tensors)
