"""Training batches in background worker processes, in step order, so the model never waits on data.

Each batch is a pure function of ``(seed, step)`` (see ``VideoDataset.train_batch``), so the workers need no
shared random state and a resumed run gets the batches an uninterrupted run would have had.
"""
from __future__ import annotations

import signal
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from . import VideoDataset


class _StepBatches(Dataset):
    def __init__(self, dataset: VideoDataset, batch_size: int, seq_len: int, seed: int, rows: slice):
        self.dataset, self.batch_size, self.seq_len, self.seed, self.rows = dataset, batch_size, seq_len, seed, rows

    def __len__(self) -> int:  # steps are unbounded; the sampler says which to load
        return 2**62

    def __getitem__(self, step: int) -> torch.Tensor:
        return torch.from_numpy(self.dataset.train_batch(step, self.batch_size, self.seq_len, self.seed)[self.rows])


def _ignore_interrupts(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: the workers leave it to the training process, which saves a
    checkpoint and then shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_batches(dataset: VideoDataset, start: int, stop: int, batch_size: int, seq_len: int, seed: int,
                  workers: int = 1, pin_memory: bool = False, rows: slice = slice(None)) -> Iterator[torch.Tensor]:
    """uint8 batches ``(B, T, C, 64, 64)`` for steps ``start .. stop-1``, loaded ahead by ``workers`` processes;
    only ``rows`` of each (a process's share when several train together)."""
    loader = DataLoader(_StepBatches(dataset, batch_size, seq_len, seed, rows), sampler=range(start, stop),
                        batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
                        pin_memory=pin_memory, worker_init_fn=_ignore_interrupts,
                        generator=torch.Generator())  # keep the global torch RNG (the model's noise) untouched
    return iter(loader)
