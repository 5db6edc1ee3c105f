"""Decode a split's videos once into a uint8 file, then serve frames from it through a memory map.

Decoding MP4 costs far more than training needs to wait for, so each split is decoded one time into
``<split>.u8``: all frames back to back, ``(total_frames, channels, 64, 64)`` in C order, beside a small JSON index
(``<split>.json``) holding each video's name, length and the fingerprint of its source file (size and
modification time, or CRC for zip members). The index is the validity mark: it is written last, removed before a
rebuild, and any difference between its sources and the files found now triggers a rebuild. Both files are
written under temporary names and moved into place, so a reader never sees half a cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from pyro_cwvae.files.atomic import atomic_path, write_text
from pyro_cwvae.files.reading import read_bytes

from . import IMAGE_SIZE, DatasetError

FORMAT_VERSION = 1
CACHE_FOLDER = ".pyro-cwvae-cache"
CACHE_ENV = "PYRO_CWVAE_CACHE"
MAX_INDEX_BYTES = 64 << 20  # a split's index: a name, a fingerprint and a length per video


class CacheSource(Protocol):
    """One source video as the cache sees it: a stable name and a fingerprint that changes with the file."""

    name: str
    fingerprint: tuple


@dataclass
class DecodedSplit:
    """All videos of one split: ``frames`` is the memory-mapped ``(total, channels, 64, 64)`` array."""

    frames: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def video(self, index: int) -> np.ndarray:
        """Video ``index`` as an in-memory array ``(time, channels, 64, 64)``."""
        start = self.offsets[index]
        return np.array(self.frames[start : start + self.lengths[index]])


def cache_folder(data_path: Path) -> Path:
    """Where the cache of ``data_path`` (a folder or a .zip) lives. ``$PYRO_CWVAE_CACHE`` wins when set; otherwise
    beside the data (inside a folder, next to a zip), and when that is not writable or is a link, under the user's
    cache directory, keyed by the data's absolute path."""
    data_path = data_path.resolve()
    keyed = f"{data_path.name}-{hashlib.sha1(str(data_path).encode()).hexdigest()[:12]}"
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / keyed
    top = data_path if data_path.is_dir() else data_path.parent
    beside = top / CACHE_FOLDER if data_path.is_dir() else top / CACHE_FOLDER / data_path.name
    if not _links_out(top, beside) and _writable(beside):
        return beside
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return user_cache / "pyro-cwvae" / keyed


def _links_out(top: Path, folder: Path) -> bool:
    """Whether a folder on the way from ``top`` down to ``folder`` is a symbolic link: a shared data folder could point
    its cache anywhere, and the cache is never written through a link (the user's cache is used instead)."""
    return any(part.is_symlink() for part in [folder, *folder.parents] if top in part.parents)


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder``: tried, since permission bits can mislead (in a folder made for the
    try and removed again: the cache folder appears only once a split is cached)."""
    missing = _missing(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
    finally:
        _remove_empty(missing)


def _missing(folder: Path) -> list[Path]:
    """``folder`` and the folders above it that do not exist yet, deepest first."""
    return [path for path in (folder, *folder.parents) if not path.exists()]


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:
        with contextlib.suppress(OSError):  # no longer empty (another process), or gone
            path.rmdir()


def _index(sources: Sequence[CacheSource], channels: int) -> dict:
    return {"format": FORMAT_VERSION, "channels": channels, "size": IMAGE_SIZE,
            "sources": [[source.name, list(source.fingerprint)] for source in sources]}


def load_split(folder: Path, split: str, sources: Sequence[CacheSource], channels: int) -> DecodedSplit | None:
    """The cached split if its index matches ``sources`` exactly, else None."""
    paths = [folder / f"{split}.json", folder / f"{split}.u8"]
    if any(path.is_symlink() or path.exists() and not path.is_file() for path in paths):
        return None  # a link or a FIFO in the cache: rebuilt (replacing it), never read
    try:
        index = json.loads(read_bytes(paths[0], MAX_INDEX_BYTES, "cache index"))
    except ValueError:  # too large or unreadable (UserError), or not JSON: rebuilt
        return None
    if not isinstance(index, dict):
        return None
    lengths = index.pop("lengths", None)
    if not _valid_lengths(lengths, len(sources)) or index != _index(sources, channels):
        return None  # stale, damaged or foreign: rebuilt, never trusted
    lengths = np.asarray(lengths, dtype=np.int64)
    shape = (int(lengths.sum()), channels, IMAGE_SIZE, IMAGE_SIZE)
    path = paths[1]
    if not path.is_file() or path.stat().st_size != int(np.prod(shape)):
        return None
    frames = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return DecodedSplit(frames, offsets, lengths)


def _valid_lengths(lengths, count: int) -> bool:
    """One positive whole frame count per source video."""
    return isinstance(lengths, list) and len(lengths) == count and all(
        type(length) is int and length > 0 for length in lengths)


Decoder = Callable[[CacheSource], np.ndarray]


def build_split(folder: Path, split: str, sources: Sequence[CacheSource], channels: int, decode: Decoder,
                desc: str) -> DecodedSplit:
    """Decode every source in order (with a progress bar) into the split's cache, then open it."""
    index_path = folder / f"{split}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        index_path.unlink(missing_ok=True)
        lengths = []
        with atomic_path(folder / f"{split}.u8") as tmp, open(tmp, "wb") as out:
            for source in tqdm(sources, desc=desc, unit="video"):
                video = decode(source)
                out.write(np.ascontiguousarray(video, dtype=np.uint8).tobytes())
                lengths.append(len(video))
        write_text(index_path, json.dumps({**_index(sources, channels), "lengths": lengths}))
    except OSError as error:
        raise DatasetError(f"cannot write the video cache in {folder}: {error.strerror or error}; set {CACHE_ENV} "
                           f"to a writable folder") from error
    split_cache = load_split(folder, split, sources, channels)
    assert split_cache is not None, "a cache just written must load"
    return split_cache


@contextlib.contextmanager
def all_or_nothing(folder: Path):
    """Caching the splits of one data folder: when a video is refused (or anything stops it), what the splits cached
    inside wrote to ``folder`` is removed again, and the folders made for it: a refused data folder is left as it
    was."""
    missing = _missing(folder)
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
        yield
    except BaseException:
        for path in set(folder.iterdir()) - before if folder.is_dir() else ():
            path.unlink(missing_ok=True)
        _remove_empty(missing)
        raise


def cached_split(folder: Path, split: str, sources: Sequence[CacheSource], channels: int, decode: Decoder,
                 desc: str) -> DecodedSplit:
    """The split from the cache, decoding it first when the cache is missing or stale."""
    return load_split(folder, split, sources, channels) or build_split(folder, split, sources, channels, decode, desc)
