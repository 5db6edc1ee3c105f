"""Video datasets for the CW-VAE: readers of the published archives and the Moving MNIST generator.

Nothing here imports Pyro. Every dataset is a :class:`VideoDataset`: it hands out uint8 videos shaped
``(time, channel, 64, 64)`` and training batches shaped ``(batch, time, channel, 64, 64)``. A batch is a
pure function of ``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

IMAGE_SIZE = 64


class DatasetError(ValueError):
    """A problem with the data that the user can fix; its message is one line, shown as is."""


class VideoDataset(ABC):
    """A train split that yields random chunks and a test split of whole videos in a fixed order."""

    name: str
    channels: int

    @abstractmethod
    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
        """uint8 ``(batch_size, seq_len, channels, 64, 64)``, deterministic in ``(seed, step)``."""

    @property
    @abstractmethod
    def num_test(self) -> int:
        """Number of test videos."""

    @abstractmethod
    def test_video(self, index: int) -> np.ndarray:
        """Test video ``index`` (fixed order), uint8 ``(time, channels, 64, 64)``."""

    def test_videos(self, count: int) -> list[np.ndarray]:
        """The first ``count`` test videos."""
        if count > self.num_test:
            raise DatasetError(f"asked for {count} test sequences but the {self.name} test split has {self.num_test}")
        return [self.test_video(i) for i in range(count)]


def batch_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The random stream for one training batch: independent across steps, reproducible for a seed."""
    return np.random.default_rng([stream, seed & 0xFFFFFFFF, step & 0xFFFFFFFFFFFF])
