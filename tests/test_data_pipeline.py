"""The training-batch loader through worker processes and shared slots, and the data-pipeline benchmark's table."""
import multiprocessing
import time

import numpy as np
import pytest
import torch

from benchmarks.data_pipeline import IN_PROCESS, table
from pyro_cwvae.data import VideoDataset
from pyro_cwvae.data.loader import train_batches
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST


class StepVideos(VideoDataset):
    """Batch ``step`` holds the value ``step + row`` in row ``row``; some steps are slow, so workers finish out of
    order and the slots are reused while later batches are still loading."""

    name, channels, num_test = "steps", 1, 0

    def __init__(self, size: int = 64):
        self.size = size

    def train_batch(self, step, batch_size, seq_len, seed):
        time.sleep(0.01 * (step % 3 == 0))
        rows = ((step + seed + np.arange(batch_size)) % 256).astype(np.uint8)
        return np.broadcast_to(rows[:, None, None, None, None], (batch_size, seq_len, 1, self.size, self.size)).copy()

    def test_video(self, index):
        raise IndexError(index)


@pytest.mark.parametrize("workers", [0, 2])
def test_loaded_batches_are_the_datasets_batches_in_step_order(workers):
    data = StepVideos()
    batches = list(train_batches(data, 5, 20, 4, 3, seed=1, workers=workers, rows=slice(1, 3)))
    assert len(batches) == 15
    for step, batch in zip(range(5, 20), batches):
        assert batch.shape == (2, 3, 1, 64, 64) and batch.dtype == torch.uint8
        assert np.array_equal(batch.numpy(), data.train_batch(step, 4, 3, 1)[1:3])


def test_a_batch_of_another_shape_still_arrives_whole():
    batches = list(train_batches(StepVideos(size=8), 0, 6, 2, 2, seed=0, workers=2))
    assert [tuple(batch.shape) for batch in batches] == [(2, 2, 1, 8, 8)] * 6
    assert [int(batch[0, 0, 0, 0, 0]) for batch in batches] == list(range(6))


def test_generated_batches_through_workers_equal_those_drawn_in_process():
    data = GeneratedMovingMNIST()
    loaded = list(train_batches(data, 3, 6, 3, 10, seed=2, workers=2))
    for step, batch in zip(range(3, 6), loaded):
        assert np.array_equal(batch.numpy(), data.train_batch(step, 3, 10, 2))


class StuckVideos(StepVideos):
    """Every batch after the first takes a minute: a worker is busy when the loader is closed."""

    def train_batch(self, step, batch_size, seq_len, seed):
        time.sleep(60 * (step > 0))
        return super().train_batch(step, batch_size, seq_len, seed)


def test_closing_the_batches_stops_a_busy_worker_that_ignores_sigterm():
    """The workers ignore SIGTERM (training saves its checkpoint first), the signal torch's shutdown sends to a
    worker that does not finish in time: closing the loader must end them all the same, in seconds."""
    batches = train_batches(StuckVideos(size=8), 0, 10, 2, 2, seed=0, workers=1)
    next(batches)
    workers = multiprocessing.active_children()
    assert workers and all(worker.is_alive() for worker in workers)
    start = time.monotonic()
    batches.close()
    assert time.monotonic() - start < 30 and not any(worker.is_alive() for worker in workers)


def test_table_gives_rate_seconds_and_ratio_to_the_step():
    rows = [dict(source="generated", channels=1, workers=IN_PROCESS, seconds=0.5, batches=10, batch=50, frames=100),
            dict(source="minerl", channels=3, workers=1, seconds=2.0, batches=10, batch=50, frames=100)]
    lines = table(rows, step=0.08).splitlines()
    assert lines[0].startswith("| source |") and "0.08 s step" in lines[0]
    assert lines[2] == "| generated (gray) | 50 x 100 | in process | 20.0 | 0.0500 | 0.62 |"
    assert lines[3] == "| minerl (RGB) | 50 x 100 | 1 | 5.0 | 0.2000 | 2.50 |"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu.sh)")
@pytest.mark.parametrize("workers", [0, 2])
def test_pinned_batches_are_pinned_and_unchanged(workers):
    """As training on a GPU asks for them: in pinned memory, through the shared slots when there are workers."""
    data = StepVideos()
    for step, batch in zip(range(4), train_batches(data, 0, 4, 3, 2, seed=0, workers=workers, pin_memory=True)):
        assert batch.is_pinned()
        assert np.array_equal(batch.numpy(), data.train_batch(step, 3, 2, 0))
