"""Training history: the loss and its terms at every step, kept as an xarray Dataset and saved as NetCDF.

Dims ``step`` (the number of optimisation steps taken) and ``level`` (1..L, as in the paper); all terms in nats
per frame. The file is rewritten atomically with each checkpoint, so it always matches a loadable state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from . import __version__
from .atomic import atomic_path
from .errors import UserError

HISTORY = "history.nc"


class History:
    def __init__(self, levels: int):
        self.levels = levels
        self.rows: list[np.ndarray] = []  # step, loss, reconstruction, grad_norm, kl_scale, kl_1..kl_L

    def extend(self, rows: np.ndarray) -> None:
        self.rows.extend(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def last(self) -> np.ndarray:
        return self.rows[-1]

    def to_dataset(self, attrs: dict) -> xr.Dataset:
        table = np.asarray(self.rows, dtype=np.float64).reshape(-1, 5 + self.levels)
        nats = {"units": "nats per frame"}
        return xr.Dataset(
            {
                "loss": ("step", table[:, 1].astype(np.float32), {**nats, "long_name": "negative ELBO"}),
                "reconstruction": ("step", table[:, 2].astype(np.float32), {**nats, "long_name": "-log p(x | s^1)"}),
                "kl": (("step", "level"), table[:, 5:].astype(np.float32), {**nats, "long_name": "KL[q || p] of each level"}),
                "grad_norm": ("step", table[:, 3].astype(np.float32), {"long_name": "global gradient norm before clipping"}),
                "kl_scale": ("step", table[:, 4].astype(np.float32), {"long_name": "weight of the KL terms"}),
            },
            coords={"step": table[:, 0].astype(np.int64), "level": np.arange(1, self.levels + 1)},
            attrs={"pyro_cwvae_version": __version__, **attrs},
        )

    def save(self, path: Path, attrs: dict) -> None:
        with atomic_path(path) as tmp:
            self.to_dataset(attrs).to_netcdf(tmp, engine="netcdf4")

    @classmethod
    def load(cls, path: Path, levels: int, upto_step: int) -> "History":
        """The saved history up to ``upto_step`` (later rows belong to steps the checkpoint never saw).

        UserError naming the file when it is unreadable or not what ``save`` writes for ``levels`` levels.
        """
        history = cls(levels)
        if not Path(path).exists():
            return history
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                check_history(ds, levels)
                ds = ds.sel(step=ds.step <= upto_step).load()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            reason = " ".join(str(error).split())
            raise UserError(f"cannot read training history {path}: {reason}") from error
        table = np.column_stack([ds.step, ds.loss, ds.reconstruction, ds.grad_norm, ds.kl_scale, ds.kl])
        history.extend(list(table))
        return history


# Every variable ``to_dataset`` writes, with its dims; all are floating point.
VARIABLES = {"loss": ("step",), "reconstruction": ("step",), "grad_norm": ("step",), "kl_scale": ("step",),
             "kl": ("step", "level")}


def check_history(ds: xr.Dataset, levels: int) -> None:
    """ValueError unless ``ds`` holds the variables of a history of ``levels`` levels at increasing integer steps."""
    for name, dims in VARIABLES.items():
        if name not in ds.variables:
            raise ValueError(f"no variable {name!r}")
        if ds[name].dims != dims or ds[name].dtype.kind != "f":
            raise ValueError(f"variable {name!r} is {ds[name].dtype} ({', '.join(map(str, ds[name].dims))}), "
                             f"not floating point ({', '.join(dims)})")
    if ds.sizes["level"] != levels:
        raise ValueError(f"it has {ds.sizes['level']} levels, the run {levels}")
    steps = ds.step.values
    if steps.dtype.kind not in "iu" or (np.diff(steps) <= 0).any():
        raise ValueError("its steps are not increasing integers")
