"""Readers of the published video archives, unpacked into a folder or left as the .zip file.

Each archive is a fixed layout of video files per split (see docs/data.md). A reader finds the files (sorted
by name, so the test order is fixed), decodes each split once into the cache of :mod:`.cache`, and then serves
training chunks from it: every training video is cut into non-overlapping chunks of ``seq_len`` frames (the
remainder dropped, as the reference implementation does), and a batch draws chunks with ``batch_rng``.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from pyro_cwvae.files.reading import printable

from . import IMAGE_SIZE, DatasetError, VideoDataset, batch_rng, video_io
from .cache import DecodedSplit, all_or_nothing, cache_folder, cached_split

SPLITS = ("train", "test")


@dataclass(frozen=True)
class VideoFile:
    """One video in a folder or a zip: ``name`` is its path inside the data, ``label`` how messages show it."""

    name: str
    label: str
    fingerprint: tuple
    root: "DataRoot" = field(compare=False, repr=False)

    def source(self) -> video_io.Source:
        return self.root.open(self.name)


class DataRoot:
    """The files under a data folder, or the members of a .zip, as POSIX paths relative to it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.is_zip = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_zip:
            try:
                self._members = {info.filename: info for info in self.archive().infolist() if not info.is_dir()}
            except (zipfile.BadZipFile, OSError) as error:
                raise DatasetError(f"{self.path} is neither a folder nor a readable .zip archive ({error})") from error

    def archive(self) -> zipfile.ZipFile:
        """The open zip, kept open (re-reading its directory for every video is slow), reopened after pickling."""
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    def files(self, folder: str, extension: str, recursive: bool = False) -> list[VideoFile]:
        """Video files in ``folder`` ('' for the top), sorted by path, optionally in every subfolder too."""
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        if self.is_zip:
            names = [name for name in self._members
                     if name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :])]
        else:
            top = self.path / folder
            found = top.glob("**/*" if recursive else "*") if top.is_dir() else []
            names = [p.relative_to(self.path).as_posix() for p in found if p.is_file()]
        names = sorted(n for n in names if n.lower().endswith(extension) and not PurePosixPath(n).name.startswith("."))
        return [VideoFile(name, self.label(name), self._fingerprint(name), self) for name in names]

    def subfolders(self, folder: str = "") -> list[str]:
        """Names of the folders directly inside ``folder``, sorted, hidden ones (like the cache) left out."""
        if self.is_zip:
            prefix = f"{folder}/" if folder else ""
            below = [name[len(prefix) :] for name in self._members if name.startswith(prefix)]
            inside = {rest.split("/")[0] for rest in below if "/" in rest}
        else:
            top = self.path / folder
            inside = {p.name for p in top.iterdir() if p.is_dir()} if top.is_dir() else set()
        return sorted(name for name in inside if not name.startswith("."))

    def label(self, name: str) -> str:
        """How messages show a file: names from an archive or a shared folder with escape codes made harmless."""
        return printable(f"{self.path}:{name}" if self.is_zip else str(self.path / name))

    def _fingerprint(self, name: str) -> tuple:
        if self.is_zip:
            info = self._members[name]
            return (info.file_size, info.CRC)
        stat = (self.path / name).stat()
        return (stat.st_size, stat.st_mtime_ns)

    def open(self, name: str) -> video_io.Source:
        """A path for a folder's file; the bytes of a zip member (videos are small enough to hold whole). A file
        larger than ``video_io.MAX_FILE_BYTES`` is refused before it is read (a zip member: by its declared size)."""
        size = self._members[name].file_size if self.is_zip else (self.path / name).stat().st_size
        if size > video_io.MAX_FILE_BYTES:
            raise DatasetError(f"{self.label(name)} has {size:,} bytes, more than the {video_io.MAX_FILE_BYTES:,} a "
                               f"video may have")
        if not self.is_zip:
            return str(self.path / name)
        return io.BytesIO(self.archive().read(name))


def open_root(path: str | os.PathLike, expected: str) -> DataRoot:
    """The data at ``path``, or a one-line error saying what was expected there."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"data folder {path} does not exist: expected {expected}")
    return DataRoot(path)


class ArchiveVideos(VideoDataset):
    """A published archive with a train and a test folder of videos; subclasses state the layout."""

    name: str
    channels: int
    archive: str  # the file users download
    url: str
    split_folders = {"train": "train", "test": "test"}  # split -> folder inside the archive
    frames_per_video: dict[str, int]  # what the real archive holds (for docs and `data info`)
    extension = ".mp4"
    native_size = (IMAGE_SIZE, IMAGE_SIZE)  # (width, height) of the archive's videos

    def __init__(self, data_dir: str | os.PathLike):
        self.root = open_root(data_dir, self.expected())
        self.base = self._find_base()
        self.files = {split: self._split_files(split) for split in SPLITS}
        for split, files in self.files.items():
            if not files:
                raise DatasetError(f"no videos in {self.where(split)}: expected {self.expected()}{self._found()}")
        self._splits: dict[str, DecodedSplit] = {}
        self._chunk_starts: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        """Without the memory maps: a worker process that gets a pickled reader reopens the cache, not a copy of it."""
        return {**self.__dict__, "_splits": {}}

    @classmethod
    def expected(cls) -> str:
        """One phrase naming the layout and the archive it comes from."""
        folders = ", ".join(f"{folder}/*{cls.extension}" for folder in cls.split_folders.values())
        return f"the unpacked {cls.archive} ({folders})"

    def _find_base(self) -> str:
        """The folder holding the split folders: the data itself, or one folder down (e.g. minerl_navigate/)."""
        train = self.split_folders["train"]
        for base in ["", *self.root.subfolders()]:
            if self.root.files(f"{base}/{train}" if base else train, self.extension):
                return base
        return ""

    def _split_files(self, split: str) -> list[VideoFile]:
        folder = self.split_folders[split]
        return self.root.files(f"{self.base}/{folder}" if self.base else folder, self.extension)

    def where(self, split: str) -> str:
        """Where a split's videos are, as messages show it."""
        return self.root.label("/".join(p for p in (self.base, self.split_folders[split]) if p))

    def _found(self) -> str:
        inside = self.root.subfolders(self.base)
        return f"; found folders: {', '.join(f'{name}/' for name in inside)}" if inside else ""

    def _decode(self, file: VideoFile) -> np.ndarray:
        return video_io.read_video(file.source(), file.label, self.channels, self.native_size)

    def split(self, split: str) -> DecodedSplit:
        """The decoded split, from the cache (decoded on first use, then kept open)."""
        if split not in self._splits:
            self._splits[split] = cached_split(cache_folder(self.root.path), f"{self.name}-{split}", self.files[split],
                                               self.channels, self._decode, f"decoding {self.name} {split}")
        return self._splits[split]

    def prepare(self) -> "ArchiveVideos":
        """Decode both splits now (or check their caches): a bad video stops a run before training, not after, and
        leaves no cache behind."""
        with all_or_nothing(cache_folder(self.root.path)):
            for split in SPLITS:
                self.split(split)
        return self

    def chunk_starts(self, seq_len: int) -> np.ndarray:
        """First frame (in the train cache) of every non-overlapping ``seq_len`` chunk of every training video."""
        if seq_len not in self._chunk_starts:
            train = self.split("train")
            per_video = [start + np.arange(length // seq_len) * seq_len
                         for start, length in zip(train.offsets, train.lengths)]
            starts = np.concatenate(per_video).astype(np.int64)
            if not len(starts):
                raise DatasetError(f"no training chunk of {seq_len} frames fits: the longest of the "
                                   f"{len(train.lengths)} training videos in {self.where('train')} has "
                                   f"{int(train.lengths.max())} frames; use a shorter --seq-len")
            self._chunk_starts[seq_len] = starts
        return self._chunk_starts[seq_len]

    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
        starts = self.chunk_starts(seq_len)
        chosen = batch_rng(seed, step).choice(len(starts), size=batch_size, replace=batch_size > len(starts))
        frames = self.split("train").frames
        return np.stack([frames[start : start + seq_len] for start in starts[chosen]])

    @property
    def num_test(self) -> int:
        return len(self.files["test"])

    def test_video(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_test:
            raise IndexError(index)
        return self.split("test").video(index)


class MovingMNISTArchive(ArchiveVideos):
    """moving_mnist_2digit.zip: two-digit Moving MNIST, gray, 100-frame training and 1000-frame test videos."""

    name = "mmnist"
    channels = 1
    archive = "moving_mnist_2digit.zip"
    url = "https://archive.org/download/moving_mnist/moving_mnist_2digit.zip"
    split_folders = {"train": "train-seq100", "test": "test-seq1000"}
    frames_per_video = {"train": 100, "test": 1000}


class GQNMazesArchive(ArchiveVideos):
    """gqn_mazes.zip: RGB walks through 3D mazes, 300 frames a video."""

    name = "gqn"
    channels = 3
    archive = "gqn_mazes.zip"
    url = "https://archive.org/download/gqn_mazes/gqn_mazes.zip"
    frames_per_video = {"train": 300, "test": 300}


class MineRLArchive(ArchiveVideos):
    """minerl_navigate.zip: RGB Minecraft navigation, 500 frames a video, in minerl_navigate/{train,test}."""

    name = "minerl"
    channels = 3
    archive = "minerl_navigate.zip"
    url = "https://archive.org/download/minerl_navigate/minerl_navigate.zip"
    frames_per_video = {"train": 500, "test": 500}

    @classmethod
    def expected(cls) -> str:
        return f"the unpacked {cls.archive} (minerl_navigate/train/*.mp4, minerl_navigate/test/*.mp4)"


KTH_PERSON = re.compile(r"person(\d+)_", re.IGNORECASE)
KTH_TRAIN_PERSONS = range(1, 17)  # persons 1-16 train, 17-25 test


class KTHArchive(ArchiveVideos):
    """KTH Action: a folder of 160x120 gray .avi files, split by the person filmed (1-16 train, 17-25 test). Frames are
    center-cropped to 120x120 and area-resized to 64x64, so people keep their proportions."""

    name = "kth"
    channels = 1
    archive = "KTH Action videos (walking.zip ... handclapping.zip from https://www.csc.kth.se/cvap/actions/)"
    url = "https://www.csc.kth.se/cvap/actions/"
    split_folders = {"train": "", "test": ""}
    frames_per_video = {}
    extension = ".avi"
    native_size = (160, 120)

    @classmethod
    def expected(cls) -> str:
        return f"the unpacked {cls.archive}: .avi files named like person01_walking_d1_uncomp.avi, in any subfolders"

    def _find_base(self) -> str:
        return ""

    def where(self, split: str) -> str:
        persons = "persons 1-16" if split == "train" else "persons 17-25"
        return f"{self.root.path} ({split} split: {persons})"

    def _split_files(self, split: str) -> list[VideoFile]:
        chosen = []
        for file in self.root.files("", self.extension, recursive=True):
            match = KTH_PERSON.search(PurePosixPath(file.name).name)
            if match is None:
                raise DatasetError(f"cannot tell who is filmed in {file.label}: expected KTH names like "
                                   f"person01_walking_d1_uncomp.avi")
            if (int(match.group(1)) in KTH_TRAIN_PERSONS) == (split == "train"):
                chosen.append(file)
        return sorted(chosen, key=lambda file: (PurePosixPath(file.name).name, file.name))


ARCHIVES: dict[str, type[ArchiveVideos]] = {reader.name: reader for reader in (MovingMNISTArchive, GQNMazesArchive,
                                                                                MineRLArchive, KTHArchive)}
