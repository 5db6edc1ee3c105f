"""Every NetCDF file the package writes (training history, rollout, evaluation): one set of provenance
attributes and one atomic writer, so any file says what made it and is never left half-written."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import xarray as xr

from pyro_cwvae import __version__
from pyro_cwvae.errors import UserError
from pyro_cwvae.files.atomic import atomic_path
from pyro_cwvae.files.reading import printable, regular_file

MAX_FILE_BYTES = 16 << 30
"""No NetCDF file of the package's comes near this; a larger one is refused before it is opened."""
MAX_DATA_BYTES = 4 << 30
"""What the variables of a file may declare, in memory (a rollout of 100 sequences x 3 samples x 1000 frames is about
2 GiB): a small compressed file declaring more is refused before anything is allocated."""
EVALUATION_TITLE = "pyro-cwvae evaluation"
"""The title of the file ``pyro-cwvae evaluate`` writes: ``plot`` tells it from the others by it."""
ROLLOUT_TITLE = "pyro-cwvae open-loop rollout"
"""The title of the file ``pyro-cwvae rollout`` writes."""


def provenance(title: str) -> dict[str, str]:
    """The attributes every file starts with: what it is, the versions that made it, and when."""
    return {"title": title, "pyro_cwvae_version": __version__, "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def versions() -> str:
    import netCDF4
    import pyro  # here: only a writer needs them, and reading a file (plot) should not wait seconds for torch
    import torch

    return ", ".join(f"{name} {version}" for name, version in [
        ("pyro-cwvae", __version__), ("pyro-ppl", pyro.__version__), ("torch", torch.__version__),
        ("numpy", np.__version__), ("xarray", xr.__version__), ("netCDF4", netCDF4.__version__)])


def write_netcdf(ds: xr.Dataset, path: str | Path, encoding: dict | None = None) -> Path:
    """Write ``ds`` to ``path`` atomically (a kill leaves the previous file or none, never a partial one)."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return Path(path)


def has_title(path: str | Path, title: str) -> bool:
    """Whether ``path`` is a NetCDF file whose ``title`` attribute is ``title`` (False for anything else, a FIFO or a
    device included): which of the project's files it is. Only the header is read."""
    import netCDF4

    try:
        regular_file(path, MAX_FILE_BYTES, "NetCDF file")
        with netCDF4.Dataset(path) as nc:
            return "title" in nc.ncattrs() and nc.getncattr("title") == title
    except (UserError, OSError, ValueError, RuntimeError):
        return False


def open_netcdf(path: str | Path, what: str, max_sizes: dict[str, int] | None = None) -> xr.Dataset:
    """``path`` opened lazily (close it, e.g. ``with``), once its header passed: a regular file whose variables
    declare at most ``MAX_DATA_BYTES`` in all and whose dims have at most ``max_sizes[dim]`` entries. ``UserError``
    naming ``what`` and the file otherwise, before any array (even a coordinate's index) is read."""
    import netCDF4

    path = regular_file(path, MAX_FILE_BYTES, what)
    label = printable(str(path))
    try:
        with netCDF4.Dataset(path) as nc:
            sizes = {name: len(dim) for name, dim in nc.dimensions.items()}
            declared = sum(math.prod(var.shape) * _itemsize(var.dtype) for var in nc.variables.values())
        for dim, limit in (max_sizes or {}).items():
            if sizes.get(dim, 0) > limit:
                raise UserError(f"{what} {label}: dimension {dim!r} has {sizes[dim]:,} entries, more than the "
                                f"{limit:,} pyro-cwvae writes")
        if declared > MAX_DATA_BYTES:
            raise UserError(f"{what} {label} declares {declared / 2**30:,.1f} GiB of data, more than the "
                            f"{MAX_DATA_BYTES / 2**30:.0f} GiB pyro-cwvae reads")
        return xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError, RuntimeError) as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"cannot read {what} {label} as NetCDF: {printable(' '.join(str(error).split()))}") from None


def _itemsize(dtype) -> int:
    """Bytes an element takes once read: its size, or a pointer's for strings and variable-length types."""
    return dtype.itemsize if isinstance(dtype, np.dtype) and dtype.itemsize else 8
