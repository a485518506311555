"""A seeded, shard-aware, resumable order of a map-style dataset across DDP ranks, and its resumable loader.

``ShardedSampler`` (a ``DistributedSampler``, so Lightning keeps it instead of wrapping it) orders one epoch:

1. ``rng = default_rng((seed, epoch))``; the distinct shards (e.g. GLDv2 tars) are permuted by it.
2. With at least as many shards as ranks, whole shards are dealt to the ranks round-robin in that order,
   so each rank reads its own tars; with fewer (e.g. extracted files: one shard ``""``), items are dealt
   instead, as ``DistributedSampler`` does.
3. Each rank shuffles its items with ``default_rng((seed, epoch, rank))`` and yields the first ``n`` of them,
   ``n`` the smallest rank's count, so every rank runs the same number of steps (the rest of a rank's items
   come back in later epochs, since the deal changes each epoch).

DataLoader workers receive the rank's indices batch by batch, so they split the rank's share between them.
``resume(epoch, start)`` makes the next pass of ``epoch`` begin at item ``start`` (then later epochs from 0).

``ResumableLoader`` implements Lightning's ``state_dict`` / ``load_state_dict`` protocol: its state is
``{"epoch", "batches"}``, its own epoch and the batches of it the training loop has taken
(``mark_consumed``, called by ``train.module_base`` at each batch start, so prefetched batches never count).
A run restarted from a mid-epoch checkpoint therefore sees exactly the batches, and augmentations, an
uninterrupted run would, whatever epoch number Lightning's loop resumes with.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from visloc.conf import ConfError


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ShardedSampler(DistributedSampler):
    """Indices of this rank for one epoch (module docstring).

    Args:
        dataset: the dataset (only its length is used).
        shards: shard key of each item ``[len(dataset)]`` (strings, or integer codes as an array).
        seed: seed of the order.
        num_replicas: ranks; default from ``torch.distributed`` (1 when not initialised).
        rank: this rank; default from ``torch.distributed``.
        shuffle: False: shards and items in their given order (dealt the same way).
    """

    def __init__(self, dataset: Dataset, shards: Sequence[str] | np.ndarray, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True) -> None:
        world, me = _world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = me if rank is None else rank
        n = len(cast(Sized, dataset))
        if len(shards) != n:
            raise ConfError(f"ShardedSampler: {len(shards)} shard keys for {n} items")
        if not 0 <= rank < num_replicas:
            raise ConfError(f"ShardedSampler: rank {rank} outside [0, {num_replicas})")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        keys, codes = np.unique(np.asarray(shards), return_inverse=True)
        self.shard_of = codes.astype(np.int64).reshape(-1)
        self.num_shards = len(keys)
        self.start = 0
        self.driven = False
        self.num_samples = min(len(self._deal(0, r)) for r in range(num_replicas))
        if self.num_samples == 0:
            raise ConfError(f"ShardedSampler: {n} items in {self.num_shards} shard(s) leave rank(s) with nothing "
                            f"over {num_replicas} ranks")
        self.total_size = self.num_samples * num_replicas

    def _deal(self, epoch: int, rank: int) -> np.ndarray:
        """All items of ``rank`` in ``epoch``, in their order ``[m]`` (not yet cut to ``num_samples``)."""
        rng = np.random.default_rng((self.seed, epoch))
        R = self.num_replicas
        if self.num_shards >= R:
            order = rng.permutation(self.num_shards) if self.shuffle else np.arange(self.num_shards)
            mine = order[rank::R]
            items = np.flatnonzero(np.isin(self.shard_of, mine))
        else:
            everything = rng.permutation(len(self.shard_of)) if self.shuffle else np.arange(len(self.shard_of))
            items = np.sort(everything[rank::R])
        if self.shuffle:
            items = items[np.random.default_rng((self.seed, epoch, rank)).permutation(len(items))]
        return items

    def indices(self, epoch: int) -> list[int]:
        """This rank's ``num_samples`` indices of ``epoch``."""
        return self._deal(epoch, self.rank)[:self.num_samples].tolist()

    def set_epoch(self, epoch: int) -> None:
        """The epoch to order next (Lightning calls it); a pending ``resume`` of another epoch is dropped.

        Ignored when a ``ResumableLoader`` drives the sampler (``driven``): the loader counts its own epochs.
        """
        if self.driven:
            return
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def resume(self, epoch: int, start: int) -> None:
        """Begin the next pass of ``epoch`` at its item ``start``."""
        if not 0 <= start <= self.num_samples:
            raise ConfError(f"ShardedSampler.resume: start {start} outside [0, {self.num_samples}]")
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.indices(self.epoch)[start:])

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a ``ShardedSampler`` whose position survives a restart (module docstring).

    The loader keeps its own epoch count (a pass that runs to its end moves it on), independent of the
    training loop's, and gives it to the sampler and to the dataset's ``set_epoch`` (augmentation) at each
    pass; workers are therefore made per pass (``persistent_workers`` is refused: they would keep an old
    epoch's dataset).

    Args:
        dataset: the dataset.
        sampler: its sampler.
        batch_size: items per batch; the last partial batch is dropped.
        **kwargs: the other ``DataLoader`` arguments.
    """

    def __init__(self, dataset: Dataset, sampler: ShardedSampler, batch_size: int, **kwargs: Any) -> None:
        if kwargs.get("persistent_workers"):
            raise ConfError("ResumableLoader: persistent_workers would keep the first epoch's augmentation")
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self.sharded = sampler
        sampler.driven = True
        self.epoch, self.start_batch, self.consumed = 0, 0, 0
        self._ran_out = False

    def __iter__(self) -> Iterator[Any]:
        if self._ran_out:
            self.epoch, self.start_batch, self._ran_out = self.epoch + 1, 0, False
        self.consumed = self.start_batch
        self.sharded.resume(self.epoch, self.start_batch * int(self.batch_size or 1))
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        return self._pass(super().__iter__())

    def _pass(self, batches: Iterator[Any]) -> Iterator[Any]:
        yield from batches
        self._ran_out = True

    def mark_consumed(self) -> None:
        """The training loop has taken one more batch (``train.module_base`` calls it at each batch start)."""
        self.consumed += 1

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}`` of the position (Lightning saves it in the checkpoint)."""
        return {"epoch": int(self.epoch), "batches": int(self.consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at the saved position: the rest of its epoch, or the next epoch when that one was done."""
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.epoch, self.start_batch, self.consumed, self._ran_out = epoch, batches, batches, False
