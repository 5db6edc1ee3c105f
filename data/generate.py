"""Write generated Moving MNIST as files in the layout and encoding of the published moving_mnist_2digit.zip.

A folder written here reads exactly like the real archive (train-seq100/*.mp4, test-seq1000/*.mp4, H.264 in
yuv420p, 64x64 gray), so the archive path (reader, cache, ``data info``) can be exercised without the download,
and a fixed, shareable set of videos can be made at any digit speed. Training videos use the training digits,
test videos the test digits; test video i is the embedded generator's test video i for the same seed and speed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from pyro_cwvae.errors import UserError
from pyro_cwvae.files.atomic import atomic_path, remove_leftovers, write_text
from pyro_cwvae.files.reading import read_bytes

from . import DatasetError, batch_rng
from .archives import MovingMNISTArchive
from .moving_mnist import TEST_STREAM, check_speed, moving_mnist_video, split_digits
from .video_io import default_codec, write_video

TRAIN_STREAM = 2  # distinct from the on-the-fly training batches (stream 0) and the test videos (TEST_STREAM)
SETTINGS = "generated.json"
"""The file in the output folder that records what is being generated there, so that an interrupted run resumes."""


def generate_moving_mnist(out: str | os.PathLike, *, num_train: int, num_test: int, train_length: int = 100,
                          test_length: int = 1000, speed: float = 1.0, seed: int = 0) -> tuple[dict[str, Path], int]:
    """Write ``num_train`` + ``num_test`` videos under ``out``; returns each split's folder and how many videos an
    interrupted run had written already (kept as they are). Files are numbered from
    00000.mp4 (the public archive's own naming is not documented); each is written under a temporary name and then moved
    into place, so an interrupted run leaves no half-written video, and the settings are recorded first (``SETTINGS``):
    run again with the same settings, it writes only the videos still missing."""
    counts = {"--train": num_train, "--test": num_test, "--train-length": train_length, "--test-length": test_length}
    for option, value in counts.items():
        if value < 1:
            raise DatasetError(f"{option} must be at least 1, got {value}")
    check_speed(speed)  # before the progress bar: a refusal is one line
    out = Path(out).expanduser()
    plan = {"train": (num_train, train_length, split_digits("train"), TRAIN_STREAM),
            "test": (num_test, test_length, split_digits("test"), TEST_STREAM)}
    folders = {split: out / MovingMNISTArchive.split_folders[split] for split in plan}
    codec = default_codec()
    settings = dict(train=num_train, test=num_test, train_length=train_length, test_length=test_length, speed=speed,
                    seed=seed, codec=codec)  # the codec too: one folder, one encoding
    if any(folder.is_dir() and any(folder.glob("*.mp4")) for folder in folders.values()):
        if recorded_settings(out) != settings:
            raise DatasetError(f"{out} already holds videos, not those of an interrupted `data generate` with these "
                               "settings: choose an empty --out folder")
    else:
        try:
            write_text(out / SETTINGS, json.dumps(settings))
        except OSError as error:
            raise DatasetError(f"cannot write to {out}: {error.strerror or error}") from error
    files = {split: [folders[split] / f"{index:0{max(5, len(str(count - 1)))}d}.mp4" for index in range(count)]
             for split, (count, *_) in plan.items()}
    kept = 0
    with tqdm(total=num_train + num_test, desc="writing Moving MNIST", unit="video") as bar:
        for split, (count, length, digits, stream) in plan.items():
            for index, file in enumerate(files[split]):
                if file.exists():  # one of an interrupted run is whole: written under another name, then moved
                    kept += 1
                else:
                    remove_leftovers(file)  # the temporary file of a write that was killed
                    write_one(file, moving_mnist_video(batch_rng(seed, index, stream=stream), digits, length, speed),
                              codec)
                bar.update()
    return folders, kept


def write_one(file: Path, video, codec: str) -> None:
    try:
        with atomic_path(file) as tmp:
            write_video(tmp, video, codec=codec, container_format="mp4")
    except OSError as error:
        raise DatasetError(f"cannot write videos to {file.parent}: {error.strerror or error}") from error


def recorded_settings(out: Path) -> dict | None:
    """The settings an earlier ``generate_moving_mnist`` recorded in ``out``; None where there are none (or the file is
    not one it wrote: a folder is someone else's until proven otherwise)."""
    try:
        values = json.loads(read_bytes(out / SETTINGS, 4096, "generation settings"))
    except (UserError, OSError, UnicodeDecodeError, ValueError):
        return None
    return values if isinstance(values, dict) else None
