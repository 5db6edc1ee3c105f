"""Batches per second of each data source against the training step: can the data pipeline keep up?

    python -m benchmarks.data_pipeline --quick                  # every source, short rows: under a minute on 2 cores
    python -m benchmarks.data_pipeline                          # more batches per row
    python -m benchmarks.data_pipeline --sources generated --workers 0,1 --batch 50 --frames 100

Sources: ``generated`` is Moving MNIST drawn on the fly (``GeneratedMovingMNIST``, what ``--dataset mmnist`` without
a data folder trains on); ``mmnist``, ``minerl``, ``gqn`` and ``kth`` are the archive readers, each on a small
archive written here into a temporary folder in its published layout (H.264 MP4, or MPEG-4 AVI at 160x120 named by
person for KTH) holding generated digits (three videos as the color planes of RGB ones). An archive is decoded once
into its cache (``data.cache``) when it is opened, a one-off cost with its own table; training batches are then cut
from the memory-mapped cache. Each source is timed (a) as ``dataset.train_batch`` in this process and (b) through
``data.loader.train_batches`` with each number of ``--workers``, taken as the training loop takes them (``next`` on
the iterator, pinned when a GPU is present, as training does) after warm-up batches that include starting the
workers. Rows give batches per second over the timed batches, seconds per batch, and that divided by the training
step (``--step``: the GPU target of 0.08 s at batch 50 x 100 frames): at most 1 means the data keeps up.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_cwvae.data import VideoDataset, batch_rng, cache, video_io
from pyro_cwvae.data.loader import train_batches
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST, moving_mnist_video, split_digits
from pyro_cwvae.data.registry import open_dataset

GPU_STEP = 0.08  # seconds per training step the GPU work aims at (mmnist size, batch 50 x 100 frames)


@dataclass(frozen=True)
class Layout:
    """A small archive in a reader's published layout: where each split's files go and what they hold."""

    folders: tuple[str, str]  # the train and the test folder inside the archive
    channels: int
    frames: int  # per video, as in the published archive (KTH's vary; 400 is typical)
    videos: int  # training videos written (a quarter of them with --quick, at least 2)
    kth: bool = False  # 160x120 AVI files named by the person filmed


LAYOUTS = {
    "mmnist": Layout(("train-seq100", "test-seq1000"), 1, 100, 32),
    "minerl": Layout(("minerl_navigate/train", "minerl_navigate/test"), 3, 500, 8),
    "gqn": Layout(("train", "test"), 3, 300, 12),
    "kth": Layout(("walking", "boxing"), 1, 400, 8, kth=True),
}
SOURCES = ("generated", *LAYOUTS)
IN_PROCESS = "in process"


def synthetic_video(index: int, layout: Layout) -> np.ndarray:
    """uint8 ``(frames, channels, H, W)`` of moving digits: one generated video per channel, padded to 160x120 for
    KTH (its reader crops the middle 120x120 and resizes it)."""
    digits = split_digits("train")
    planes = [moving_mnist_video(batch_rng(index, channel, stream=7), digits, layout.frames)
              for channel in range(layout.channels)]
    video = np.concatenate(planes, axis=1)
    return np.pad(video, ((0, 0), (0, 0), (28, 28), (48, 48))) if layout.kth else video


def file_name(layout: Layout, split: str, index: int) -> str:
    if not layout.kth:
        return f"{index:05d}.mp4"
    person = index + 1 if split == "train" else 17 + index  # KTH: persons 1-16 train, 17-25 test
    return f"person{person:02d}_{layout.folders[split == 'test']}_d1_uncomp.avi"


def write_archive(name: str, root: Path, quick: bool) -> int:
    """Write the small ``name`` archive under ``root`` (its training videos, and one test video); the frames written."""
    layout = LAYOUTS[name]
    videos = max(2, layout.videos // 4) if quick else layout.videos
    written = 0
    for split, count in (("train", videos), ("test", 1)):
        folder = root / layout.folders[split == "test"]
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            video = synthetic_video(index if split == "train" else 1000 + index, layout)
            video_io.write_video(folder / file_name(layout, split, index), video,
                                 codec="mpeg4" if layout.kth else None)
            written += len(video)
    return written


@contextmanager
def cache_in(folder: Path):
    """Decoded caches go to ``folder`` (removed with it), whatever the environment names, and worker processes
    (which inherit the environment) reopen them there."""
    before = os.environ.get(cache.CACHE_ENV)
    os.environ[cache.CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(cache.CACHE_ENV, None)
        else:
            os.environ[cache.CACHE_ENV] = before


def in_process(dataset: VideoDataset, args) -> float:
    """Seconds for ``args.batches`` calls of ``train_batch`` (steps 1, 2, ...) after one warm-up call (step 0)."""
    dataset.train_batch(0, args.batch, args.frames, 0)
    started = time.perf_counter()
    for step in range(1, args.batches + 1):
        dataset.train_batch(step, args.batch, args.frames, 0)
    return time.perf_counter() - started


def through_loader(dataset: VideoDataset, workers: int, args, pin: bool) -> float:
    """Seconds for ``args.batches`` batches of ``train_batches`` after ``2 * workers + 1`` warm-up batches (starting
    the workers and filling their queues); the iterator runs to its end, which shuts the workers down."""
    warm = 2 * workers + 1
    batches = train_batches(dataset, 0, warm + args.batches, args.batch, args.frames, seed=0, workers=workers,
                            pin_memory=pin)
    for _ in range(warm):
        next(batches)
    started = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    elapsed = time.perf_counter() - started
    for _ in batches:  # nothing is left: the loader sees its end and stops its workers
        pass
    return elapsed


def measure(source: str, dataset: VideoDataset, args, pin: bool) -> list[dict]:
    """One row per way of loading ``source``: in this process, then through the loader with each ``--workers``."""
    rows = [dict(source=source, channels=dataset.channels, workers=IN_PROCESS, seconds=in_process(dataset, args))]
    for workers in args.workers:
        rows.append(dict(source=source, channels=dataset.channels, workers=workers,
                         seconds=through_loader(dataset, workers, args, pin)))
        print(f"({source}: {workers} workers done)", file=sys.stderr, flush=True)
    for row in rows:
        row.update(batches=args.batches, batch=args.batch, frames=args.frames)
    return rows


def open_archive(name: str, folder: Path, args) -> tuple[VideoDataset, dict]:
    """The reader of a freshly written small ``name`` archive and how long writing and the first open (decoding both
    splits into the cache) took."""
    root = folder / name
    started = time.perf_counter()
    frames = write_archive(name, root, args.quick)
    written = time.perf_counter() - started
    started = time.perf_counter()
    dataset = open_dataset(name, root)
    decoded = time.perf_counter() - started
    layout = LAYOUTS[name]
    return dataset, dict(source=name, frames=frames, shape=layout_shape(layout), write=written, decode=decoded)


def layout_shape(layout: Layout) -> str:
    size = "160x120" if layout.kth else "64x64"
    return f"{size} {'RGB' if layout.channels == 3 else 'gray'}, {layout.frames} frames a video"


def table(rows: list[dict], step: float) -> str:
    """Markdown: per row the source, the workers, batches per second, seconds per batch and that over ``step``."""
    lines = [f"| source | batch x frames | workers | batches/s | s/batch | s/batch / {step:g} s step |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        per_batch = row["seconds"] / row["batches"]
        channels = "RGB" if row["channels"] == 3 else "gray"
        lines.append(f"| {row['source']} ({channels}) | {row['batch']} x {row['frames']} | {row['workers']} "
                     f"| {1.0 / per_batch:.1f} | {per_batch:.4f} | {per_batch / step:.2f} |")
    return "\n".join(lines)


def decode_table(rows: list[dict]) -> str:
    """Markdown: the one-off cost of each small archive: writing it, and decoding it into the cache on first open."""
    lines = ["| archive | videos as written | frames (train + test) | write s | first open s | frames decoded/s |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['source']} | {row['shape']} | {row['frames']:,} | {row['write']:.1f} "
                     f"| {row['decode']:.1f} | {row['frames'] / row['decode']:,.0f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated: " + ", ".join(SOURCES))
    parser.add_argument("--workers", default="0,1,2,4", help="loader worker counts to time (default 0,1,2,4)")
    parser.add_argument("--batch", type=int, default=50, help="sequences per batch (default 50)")
    parser.add_argument("--frames", type=int, default=100, help="frames per sequence (default 100)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per row (default 40; --quick 10)")
    parser.add_argument("--step", type=float, default=GPU_STEP, help="training step to compare with, in seconds "
                                                                     f"(default {GPU_STEP}: the GPU target)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin batches even when a GPU is present")
    parser.add_argument("--quick", action="store_true", help="fewer batches per row and smaller archives: minutes")
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = 10 if args.quick else 40
    args.sources = [s for s in args.sources.split(",") if s]
    for name in args.sources:
        if name not in SOURCES:
            parser.error(f"unknown source {name!r}: choose from {', '.join(SOURCES)}")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        parser.error(f"--workers takes comma-separated counts, got {args.workers!r}")
    if args.batch < 1 or args.frames < 1 or args.batches < 1 or any(w < 0 for w in args.workers):
        parser.error("--batch, --frames and --batches must be positive, --workers not negative")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    pin = torch.cuda.is_available() and not args.no_pin
    command = "python -m benchmarks.data_pipeline " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`{command}`\n\nCPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, Python {platform.python_version()}; batches pinned: {'yes' if pin else 'no'}\n")
    started = time.perf_counter()
    rows, opened = [], []
    with tempfile.TemporaryDirectory(prefix="data-pipeline-") as tmp, cache_in(Path(tmp) / "cache"):
        for source in args.sources:
            if source == "generated":
                dataset = GeneratedMovingMNIST()
            else:
                dataset, one_off = open_archive(source, Path(tmp), args)
                opened.append(one_off)
            rows += measure(source, dataset, args, pin)
    print(f"Batches per second of {args.batches} timed batches per row; a ratio at most 1 keeps up with a "
          f"{args.step:g} s training step.\n")
    print(table(rows, args.step))
    if opened:
        print("\nOne-off cost of each small archive: writing it, and decoding it into its cache on first open.\n")
        print(decode_table(opened))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
