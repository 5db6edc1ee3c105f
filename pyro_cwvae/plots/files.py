"""The files of the plots stage: a rollout file read and checked before anything is drawn, and figures written
atomically."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pyro_cwvae.errors import UserError
from pyro_cwvae.files.atomic import atomic_path

_FRAME = ("sample", "sequence", "time", "channel", "y", "x")
_CURVE = ("sequence", "time")
# What the figures read: each variable's dims and dtype kind (u: uint8 images, b: flags, f: floats). A rollout
# file may hold more (later versions add variables); these must be there as written.
REQUIRED_VARIABLES = {
    "prediction": (_FRAME, "u"),
    "truth": (_FRAME[1:], "u"),
    "is_context": (("time",), "b"),
    "has_truth": (_CURVE, "b"),
    "psnr": (_FRAME[:3], "f"),
    "ssim": (_FRAME[:3], "f"),
    **{f"{metric}_{curve}": (_CURVE, "f") for curve in ("best", "last_frame", "random_frame")
       for metric in ("psnr", "ssim")},
    "kl": (("sequence", "level", "time"), "f"),
    "kl_table": (("level",), "f"),
}
# The spread over samples, drawn when present (a rollout of one sample has none); checked like the above.
OPTIONAL_VARIABLES = {
    "prediction_std": (_FRAME[1:], "u"),
    "latent_std": (("sequence", "level", "time"), "f"),
}
_DTYPE_NAMES = {"u": "uint8", "b": "bool", "f": "floating point"}


def read_rollout(path: Path) -> xr.Dataset:
    """Load a rollout NetCDF file; ``UserError`` naming the file if it is missing, unreadable or no rollout."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            ds = ds.load()  # read everything now, so a truncated file fails here and not halfway through a figure
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot read {path} as NetCDF: {error}") from error
    try:
        check_rollout(ds)
    except UserError as error:
        raise UserError(f"{path}: {error}") from error
    return ds


def check_rollout(ds: xr.Dataset) -> None:
    """Raise ``UserError`` unless ``ds`` has every variable the figures read, with its dims and dtype, at least
    one entry along each dim, integer labels and 1 or 3 channels."""
    for name in REQUIRED_VARIABLES:
        if name not in ds.variables:
            raise UserError(f"dataset is not a pyro-cwvae rollout: no variable {name!r}")
    variables = {**REQUIRED_VARIABLES, **{k: v for k, v in OPTIONAL_VARIABLES.items() if k in ds.variables}}
    for name, (dims, kind) in variables.items():
        variable = ds[name]
        if variable.dims != dims:
            raise UserError(f"variable {name!r} has dims ({', '.join(map(str, variable.dims))}), "
                            f"not ({', '.join(dims)})")
        if variable.dtype.kind != kind or kind == "u" and variable.dtype != np.uint8:
            raise UserError(f"variable {name!r} is {variable.dtype}, not {_DTYPE_NAMES[kind]}")
    for dim in ("sample", "sequence", "time", "level", "channel", "y", "x"):
        if ds.sizes[dim] < 1:
            raise UserError(f"dimension {dim!r} is empty")
    for dim in ("sample", "sequence", "time", "level"):
        if ds[dim].dtype.kind not in "iu":
            raise UserError(f"coordinate {dim!r} is {ds[dim].dtype}, not integers")
    channels = ds.sizes["channel"]
    if channels not in (1, 3):
        raise UserError(f"rollout frames must have 1 or 3 channels to be plotted, not {channels}")


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
