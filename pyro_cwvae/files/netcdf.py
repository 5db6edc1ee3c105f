"""Every NetCDF file the package writes (training history, rollout, evaluation): one set of provenance
attributes and one atomic writer, so any file says what made it and is never left half-written."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyro
import torch
import xarray as xr

from pyro_cwvae import __version__
from pyro_cwvae.files.atomic import atomic_path

EVALUATION_TITLE = "pyro-cwvae evaluation"
"""The title of the file ``pyro-cwvae evaluate`` writes: ``plot`` tells it from the others by it."""


def provenance(title: str) -> dict[str, str]:
    """The attributes every file starts with: what it is, the versions that made it, and when."""
    return {"title": title, "pyro_cwvae_version": __version__, "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def versions() -> str:
    import netCDF4

    return ", ".join(f"{name} {version}" for name, version in [
        ("pyro-cwvae", __version__), ("pyro-ppl", pyro.__version__), ("torch", torch.__version__),
        ("numpy", np.__version__), ("xarray", xr.__version__), ("netCDF4", netCDF4.__version__)])


def write_netcdf(ds: xr.Dataset, path: str | Path, encoding: dict | None = None) -> Path:
    """Write ``ds`` to ``path`` atomically (a kill leaves the previous file or none, never a partial one)."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return Path(path)


def has_title(path: str | Path, title: str) -> bool:
    """Whether ``path`` is a NetCDF file whose ``title`` attribute is ``title`` (False for anything else): which of
    the project's files it is."""
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.attrs.get("title") == title
    except (OSError, ValueError, RuntimeError):
        return False
