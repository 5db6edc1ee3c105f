"""Training batches in background worker processes, in step order, so the model never waits on data.

Each batch is a pure function of ``(seed, step)`` (see ``VideoDataset.train_batch``), so the workers need no
shared random state and a resumed run gets the batches an uninterrupted run would have had.

Workers write their batches into shared-memory slots allocated once, and the training process copies each out (into
pinned memory when asked): handing every batch over as a fresh shared-memory tensor, torch's default, cost more than
drawing it (30 ms for a 50 x 100 gray batch, 100 ms for an RGB one, on a 2-core machine). The loader hands a worker
a new step only when the training process takes a batch, and at most ``workers * PREFETCH`` steps are loading at any
time, so ``workers * PREFETCH + 1`` slots, used in turn, are never written while a batch in them is still unread.
"""
from __future__ import annotations

import itertools
import signal
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import IMAGE_SIZE, VideoDataset

PREFETCH = 2
"""Batches each worker loads ahead (the DataLoader's ``prefetch_factor``)."""


class _StepBatches(Dataset):
    """Batch ``step``, indexed by ``(step, slot)``: with ``slots``, written into ``slots[slot]`` and the slot's number
    returned; a batch of another shape or type than the slots' (a dataset's own choice) is returned as a tensor."""

    def __init__(self, dataset: VideoDataset, batch_size: int, seq_len: int, seed: int, rows: slice,
                 slots: torch.Tensor | None = None):
        self.dataset, self.batch_size, self.seq_len, self.seed, self.rows = dataset, batch_size, seq_len, seed, rows
        self.slots = slots

    def __len__(self) -> int:  # steps are unbounded; the sampler says which to load
        return 2**62

    def __getitem__(self, index: tuple[int, int]) -> torch.Tensor | int:
        step, slot = index
        batch = self.dataset.train_batch(step, self.batch_size, self.seq_len, self.seed)[self.rows]
        if self.slots is None or batch.shape != self.slots.shape[1:] or batch.dtype != np.uint8:
            return torch.from_numpy(batch)
        np.copyto(self.slots[slot].numpy(), batch)
        return slot


def _ignore_interrupts(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: the workers leave it to the training process, which saves a
    checkpoint and then shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_batches(dataset: VideoDataset, start: int, stop: int, batch_size: int, seq_len: int, seed: int,
                  workers: int = 1, pin_memory: bool = False, rows: slice = slice(None)) -> Iterator[torch.Tensor]:
    """uint8 batches ``(B, T, C, 64, 64)`` for steps ``start .. stop-1``, loaded ahead by ``workers`` processes;
    only ``rows`` of each (a process's share when several train together). Close the iterator when done with it,
    however training ends: that stops the workers (``_stop_workers``)."""
    if not workers:
        loader = DataLoader(_StepBatches(dataset, batch_size, seq_len, seed, rows),
                            sampler=zip(range(start, stop), itertools.repeat(0)), batch_size=None,
                            pin_memory=pin_memory, generator=torch.Generator())  # the global RNG: the model's noise
        return (batch for batch in loader)  # a generator, closed as the workers' one is
    return _through_slots(dataset, start, stop, batch_size, seq_len, seed, workers, pin_memory, rows)


def _through_slots(dataset: VideoDataset, start: int, stop: int, batch_size: int, seq_len: int, seed: int,
                   workers: int, pin_memory: bool, rows: slice) -> Iterator[torch.Tensor]:
    """The workers start loading now; the batches are copied out of their slots as they are taken."""
    shape = (len(range(batch_size)[rows]), seq_len, dataset.channels, IMAGE_SIZE, IMAGE_SIZE)
    slots = torch.empty((workers * PREFETCH + 1, *shape), dtype=torch.uint8).share_memory_()
    steps = zip(range(start, stop), itertools.cycle(range(len(slots))))
    loader = DataLoader(_StepBatches(dataset, batch_size, seq_len, seed, rows, slots), sampler=steps,
                        batch_size=None, num_workers=workers, prefetch_factor=PREFETCH,
                        worker_init_fn=_ignore_interrupts, generator=torch.Generator())
    return _taken(iter(loader), slots, pin_memory)


def _taken(loaded: Iterator[torch.Tensor | int], slots: torch.Tensor, pin_memory: bool) -> Iterator[torch.Tensor]:
    try:
        for item in loaded:
            if isinstance(item, torch.Tensor):
                yield item.pin_memory() if pin_memory else item
            else:  # the slot is written again once the next batch is asked for: the batch leaves it now
                yield _copy_out(slots[item], pin_memory)
    finally:  # however the batches end: closed, exhausted, or a worker's error
        _stop_workers(loaded)


def _stop_workers(loaded: Iterator) -> None:
    """Shut the loader's workers down now: torch's own shutdown, then SIGKILL for a worker still busy after it. They
    ignore SIGTERM, which that shutdown and Python's exit send, so a worker left running would keep the training
    process from ever exiting."""
    getattr(loaded, "_shutdown_workers", lambda: None)()
    for worker in getattr(loaded, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def _copy_out(slot: torch.Tensor, pin_memory: bool) -> torch.Tensor:
    """A copy of ``slot`` in pinned memory (torch reuses its pinned blocks), or in memory numpy allocates: numpy asks
    the kernel for huge pages, which made a fresh 60 MB batch 5x faster to fill than torch's own allocation."""
    if pin_memory:
        return torch.empty(slot.shape, dtype=slot.dtype, pin_memory=True).copy_(slot)
    return torch.from_numpy(slot.numpy().copy())
