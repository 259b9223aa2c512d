"""Batches cut straight from in-memory tensors.

MNIST-sized data sets fit in memory many times over, so a ``DataLoader`` that indexes one sample
at a time and collates them back costs more than the model's arithmetic. ``TensorBatchLoader``
permutes indices once per epoch and slices whole batches (``index_select``), on whatever device
the tensors live (on a GPU the data never crosses the bus per step).

Lightning only injects a ``DistributedSampler`` into ``torch.utils.data.DataLoader``; for any
other iterable the data must shard itself. ``ShardedPermutation`` does what DistributedSampler
does (each rank a distinct, equally long part of every epoch, reshuffled per epoch from
``seed + epoch``) and exposes ``set_epoch``, which Lightning calls on ``loader.sampler``.

For ``LitMLP.steps_per_call > 1`` the loader serves a :class:`BatchGroup` of consecutive
batches per fetch, each gathered only when its step reaches it (see :mod:`mlplab.grouped`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

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


class BatchGroup:
    """Consecutive batches of one epoch for one ``training_step`` call, each gathered when it is reached.

    Gathering a whole group up front would hold all its batches at once (16 batches of 256 MNIST
    images: 13 MB); the allocator returns such memory to the system after every call and takes
    it back with page faults in the next (about 5,000 per Fashion-MNIST epoch). Gathered one at
    a time, each batch reuses the memory of the one before, as in a plain loop.

    Iterate over it (or index it) for tuples of tensors; :meth:`map` adds a per-batch transform
    (device transfer, augmentation) applied as each batch is gathered.
    """

    def __init__(
        self, gather: Callable[[int], tuple[Tensor, ...]], indices: range, transforms: tuple[Callable, ...] = (), ends_epoch: bool = False
    ) -> None:
        self.gather, self.indices, self.transforms, self.ends_epoch = gather, indices, transforms, ends_epoch
        # the latest batch served: asking again (a callback looking at the first batch, then the step
        # training on it) must not draw the augmentation's random numbers twice
        self.latest: tuple[int, tuple[Tensor, ...]] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Tensor, ...]:
        if self.latest is not None and self.latest[0] == position:
            return self.latest[1]
        batch = self.gather(self.indices[position])
        for transform in self.transforms:
            batch = transform(batch)
        self.latest = (position, batch)
        return batch

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        return (self[position] for position in range(len(self)))

    def map(self, transform: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]) -> BatchGroup:
        """The same batches with ``transform`` applied to each (after the transforms already there)."""
        return BatchGroup(self.gather, self.indices, (*self.transforms, transform), self.ends_epoch)

    @classmethod
    def of(cls, batch: Any, ends_epoch: bool) -> BatchGroup:
        """A group of the one batch ``batch`` (what a loader that does not group serves)."""
        return cls(lambda _: batch, range(1), ends_epoch=ends_epoch)


@runtime_checkable
class GroupsTrainBatches(Protocol):
    """A DataModule that can serve its training batches in groups: the contract between ``LitMLP`` and the data side.

    ``LitMLP.setup`` asks for groups of ``steps_per_call`` batches when its fit can take them
    (:func:`mlplab.grouped.eligibility.one_step_per_call_reason`); the data module answers whether it will.
    Lightning's loop then fetches a :class:`BatchGroup` and steps once per batch in it.
    """

    def group_train_batches(self, group: int) -> bool:
        """Serve ``group`` consecutive training batches per fetch from the next train loader on; False if this module cannot."""
        ...


class TensorBatchLoader:
    """Iterate over ``tensors`` (equal first dimension) in batches of ``batch_size``.

    Yields tuples of tensors (e.g. ``(images, labels)``); ordered loaders yield views (no copy).
    With ``group > 1`` it yields :class:`BatchGroup` objects of up to ``group`` consecutive such
    batches instead (the same batches in the same order), for :class:`mlplab.grouped.GroupedTrainingEpochLoop`
    (see ``LitMLP.steps_per_call``); ``len()`` still counts batches, as Lightning's loop does.
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
        self.batches_served = 0  # batches of the current epoch handed out so far (skipped ones included)
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches) to skip once that epoch starts

    def state_dict(self) -> dict[str, int]:
        """Where the current epoch stands, saved in checkpoints so a resumed fit continues mid-epoch.

        Lightning fetches a sized loader's batches one at a time, without prefetching, and a
        group's batches are gathered by the steps that train on them, so the batches served are
        exactly the batches trained on when a checkpoint is written.
        """
        return {"epoch": self.sampler.epoch, "batches_served": self.batches_served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches already trained on when that epoch's iteration starts (no effect on other epochs)."""
        self.resume_at = (int(state["epoch"]), int(state["batches_served"]))

    def num_batches(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches()

    def __iter__(self) -> Iterator[tuple[Tensor, ...] | BatchGroup]:
        # a generator: the epoch's permutation and any resume skip are settled at the first batch, after
        # Lightning has called set_epoch and restored the loader's state
        first, gather = self._start_epoch()
        count = self.num_batches()
        if self.group == 1:
            for k in range(first, count):
                yield gather(k)
        else:
            for start in range(first, count, self.group):
                stop = min(start + self.group, count)
                yield BatchGroup(gather, range(start, stop), ends_epoch=stop == count)

    def _start_epoch(self) -> tuple[int, Callable[[int], tuple[Tensor, ...]]]:
        """The first batch to serve this epoch (after a mid-epoch resume: the next untrained one) and ``gather(k)`` of batch ``k``."""
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.sampler.epoch:
            skip = self.resume_at[1]
        self.resume_at, self.batches_served = None, skip
        size = self.batch_size
        if self.sampler.shuffle:
            order = self.sampler.permutation().to(self.tensors[0].device)

            def cut(k: int) -> tuple[Tensor, ...]:
                index = order[k * size : (k + 1) * size]
                return tuple(t.index_select(0, index) for t in self.tensors)

        else:
            first, last = self.sampler.contiguous_range()

            def cut(k: int) -> tuple[Tensor, ...]:  # views, no copy
                start = first + k * size
                return tuple(t[start : min(start + size, last)] for t in self.tensors)

        def gather(k: int) -> tuple[Tensor, ...]:
            self.batches_served = max(self.batches_served, k + 1)
            return cut(k)

        return skip, gather
