"""The files of the plots stage: a rollout file read and checked before anything is drawn, and figures written
atomically."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pyro_cwvae.data import IMAGE_SIZE
from pyro_cwvae.errors import UserError
from pyro_cwvae.files.atomic import atomic_path
from pyro_cwvae.files.netcdf import open_netcdf
from pyro_cwvae.files.reading import printable

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
_DTYPE_NAMES = {"u": "uint8", "b": "bool", "f": "floating point", "i": "integers"}
FRAME_SIZES = {"y": IMAGE_SIZE, "x": IMAGE_SIZE, "channel": 3}
"""The largest frames a rollout file holds: what the model draws."""


def read_rollout(path: Path) -> xr.Dataset:
    """Load a rollout NetCDF file; ``UserError`` naming the file if it is missing, unreadable or no rollout."""
    return read_checked(path, "rollout file", check_rollout, FRAME_SIZES)


def read_checked(path: Path, what: str, check, max_sizes: dict[str, int] | None = None) -> xr.Dataset:
    """Load ``path`` once its header passed ``open_netcdf`` and its variables ``check``: ``UserError`` naming the
    file otherwise."""
    path = Path(path)
    with open_netcdf(path, what, max_sizes) as ds:
        try:
            check(ds)
            ds = ds.load()  # read everything now, so a truncated file fails here and not halfway through a figure
        except UserError as error:
            raise UserError(f"{printable(str(path))}: {error}") from error
        except (OSError, ValueError, RuntimeError) as error:
            raise UserError(f"cannot read {what} {printable(str(path))} as NetCDF: "
                            f"{printable(' '.join(str(error).split()))}") from error
    return ds


def check_rollout(ds: xr.Dataset) -> None:
    """Raise ``UserError`` unless ``ds`` has every variable the figures read, with its dims and dtype, at least
    one entry along each dim, integer labels and 1 or 3 channels."""
    if missing := next((name for name in REQUIRED_VARIABLES if name not in ds.variables), None):
        raise UserError(f"dataset is not a pyro-cwvae rollout: no variable {missing!r}")
    check_variables(ds, {**REQUIRED_VARIABLES, **{k: v for k, v in OPTIONAL_VARIABLES.items() if k in ds.variables}},
                    ("sample", "sequence", "time", "level"))
    for dim in ("channel", "y", "x"):
        if ds.sizes[dim] < 1:
            raise UserError(f"dimension {dim!r} is empty")
    channels = ds.sizes["channel"]
    if channels not in (1, 3):
        raise UserError(f"rollout frames must have 1 or 3 channels to be plotted, not {channels}")


def check_variables(ds: xr.Dataset, variables: dict[str, tuple[tuple[str, ...], str]], labels: tuple[str, ...]
                    ) -> None:
    """``UserError`` unless each of ``variables`` has its dims and dtype kind (``_DTYPE_NAMES``), and each of
    ``labels`` is a non-empty dimension labelled by integers."""
    for name, (dims, kind) in variables.items():
        variable = ds[name]
        if variable.dims != dims:
            raise UserError(f"variable {name!r} has dims ({printable(', '.join(map(str, variable.dims)))}), "
                            f"not ({', '.join(dims)})")
        if variable.dtype.kind not in {"i": "iu"}.get(kind, kind) or kind == "u" and variable.dtype != np.uint8:
            raise UserError(f"variable {name!r} is {variable.dtype}, not {_DTYPE_NAMES[kind]}")
    for dim in labels:
        if ds.sizes[dim] < 1:
            raise UserError(f"dimension {dim!r} is empty")
        if ds[dim].dtype.kind not in "iu":
            raise UserError(f"coordinate {dim!r} is {ds[dim].dtype}, not integers")


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
