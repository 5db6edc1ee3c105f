"""Dataset names to readers, and data folders back to the dataset they hold.

``open_dataset`` (``open_run_data`` for a run's config) is the one door the training and evaluation code uses:
with no data folder, ``mmnist`` is the embedded Moving MNIST generator, so ``pyro-cwvae fit`` runs without a
download; every other dataset needs its published archive. ``describe`` is the inverse, for ``pyro-cwvae data
info``: it says which archive a folder looks like and what its videos are, reading only the file headers.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from . import DatasetError, VideoDataset, video_io
from .archives import ARCHIVES, ArchiveVideos, KTHArchive, open_root
from .cache import cache_folder, load_split
from .moving_mnist import GeneratedMovingMNIST

DATASETS = tuple(ARCHIVES)


def open_dataset(name: str, data_dir: str | os.PathLike | None, *, speed: float = 1.0, seed: int = 0) -> VideoDataset:
    """The dataset ``name`` read from ``data_dir``; ``mmnist`` without one is generated on the fly. ``speed`` scales the
    digits' motion of generated Moving MNIST (the frame-rate study); an archive's videos have the speed they were
    recorded at, so any other value with a data folder is an error."""
    if name not in ARCHIVES:
        raise DatasetError(f"unknown dataset {name!r}: known datasets are {', '.join(DATASETS)}")
    reader = ARCHIVES[name]
    if data_dir is None:
        if name == "mmnist":
            return GeneratedMovingMNIST(speed=speed, seed=seed)
        raise DatasetError(f"--dataset {name} needs --data-dir: get {reader.archive} with `pyro-cwvae data download "
                           f"{name} --out DIR` and point --data-dir at DIR ({reader.expected()})")
    if speed != 1.0:
        raise DatasetError(f"--speed only applies to generated Moving MNIST (mmnist without --data-dir); "
                           f"{name} videos keep their recorded speed")
    return reader(data_dir).prepare()


def open_run_data(cfg, data_dir: str | os.PathLike | None = None) -> VideoDataset:
    """The data of a run of ``cfg`` (its dataset, data folder, speed and seed), read from ``data_dir`` if it moved."""
    return open_dataset(cfg.dataset, str(data_dir) if data_dir else cfg.data_dir, speed=cfg.speed, seed=cfg.seed)


def detect(data_dir: str | os.PathLike) -> ArchiveVideos:
    """The reader for whichever published layout ``data_dir`` (a folder or .zip) has, judged by its folder names."""
    layouts = "; ".join(reader.expected() for reader in ARCHIVES.values())
    root = open_root(data_dir, f"one of: {layouts}")
    folders = {Path(name).name for top in root.subfolders() for name in [top, *root.subfolders(top)]}
    if folders & {"train-seq100", "test-seq1000"}:
        return ARCHIVES["mmnist"](data_dir)
    if "minerl_navigate" in folders or root.path.stem == "minerl_navigate":
        return ARCHIVES["minerl"](data_dir)
    if folders & {"train", "test"}:
        return ARCHIVES["gqn"](data_dir)
    if root.files("", KTHArchive.extension, recursive=True):
        return ARCHIVES["kth"](data_dir)
    raise DatasetError(f"{root.path} does not look like a published video archive: expected {layouts}")


def _tally(values: list) -> str:
    """'64x64' when all agree, else each value with its count, most common first."""
    counts = Counter(values).most_common()
    return str(counts[0][0]) if len(counts) == 1 else ", ".join(f"{value} ({count} videos)" for value, count in counts)


def describe(data_dir: str | os.PathLike) -> list[str]:
    """Lines saying which dataset ``data_dir`` holds and, per split, its videos' counts, lengths, sizes and formats."""
    reader = detect(data_dir)
    read_as = f"read as {reader.channels} channel{'s' if reader.channels > 1 else ''} at 64x64"
    lines = [f"{reader.root.path}: {reader.name} dataset, {reader.expected()}"]
    for split, files in reader.files.items():
        bar = tqdm(files, desc=f"reading {split} headers", unit="video", leave=False)
        infos = [video_io.probe(file.source(), file.label) for file in bar]
        frames = [info.frames for info in infos]
        length = f"{min(frames)}" if min(frames) == max(frames) else f"{min(frames)}-{max(frames)}"
        published = reader.frames_per_video.get(split)
        note = f" (the published archive has {published})" if published and published != max(frames) else ""
        sizes = _tally([f"{info.width}x{info.height}" for info in infos])
        lines.append(f"{split}: {len(files)} videos in {reader.where(split)}, {length} frames each{note}, "
                     f"{sizes}, stored as {_tally([info.pix_fmt for info in infos])}, {read_as}")
    folder = cache_folder(reader.root.path)
    built = [s for s, files in reader.files.items() if load_split(folder, f"{reader.name}-{s}", files, reader.channels)]
    state = ", ".join(built) if built else "not built yet; the first training run builds it"
    lines.append(f"decoded cache: {folder} ({state})")
    return lines
