"""Training history: the loss and its terms at every step, kept as an xarray Dataset and saved as NetCDF.

Dims ``step`` (the number of optimisation steps taken) and ``level`` (1..L, as in the paper); all terms in nats
per frame. What a watcher measures now and then during training (the previews: open-loop scores against the
baselines) lies beside them as ``preview_*`` variables along their own dim ``preview_step``. The file is rewritten
atomically with each checkpoint, so it always matches a loadable state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from pyro_cwvae.errors import UserError
from pyro_cwvae.files.netcdf import open_netcdf, provenance, write_netcdf
from pyro_cwvae.files.reading import printable

HISTORY = "history.nc"
TITLE = "pyro-cwvae training history"


@dataclass
class Row:
    """What one training step logs, all terms in nats per frame."""

    step: int  # optimisation steps taken, this one included
    loss: float  # negative ELBO
    reconstruction: float  # -log p(x | s^1)
    grad_norm: float  # global gradient norm before clipping
    kl_scale: float  # weight of the KL terms (the warm-up)
    kl: np.ndarray  # (L,) KL of each level


# Each scalar column of a Row, as the variable ``History.to_dataset`` writes it: (long name, units).
COLUMNS = {
    "loss": ("negative ELBO", "nats per frame"),
    "reconstruction": ("-log p(x | s^1)", "nats per frame"),
    "grad_norm": ("global gradient norm before clipping", None),
    "kl_scale": ("weight of the KL terms", None),
}


PREVIEW = "preview_"  # the prefix of every preview variable, and of its dim preview_step


class History:
    def __init__(self, levels: int):
        self.levels = levels
        self.rows: list[Row] = []
        self.previews: list[tuple[int, dict[str, float]]] = []  # (step, {variable: value})
        self.preview_attrs: dict[str, dict] = {}  # each preview variable's attributes (long_name, units)

    def extend(self, rows: list[Row]) -> None:
        self.rows.extend(rows)

    def skipped_steps(self) -> int:
        """The steps skipped for a non-finite loss or gradient norm (the step's own check: training/step.py)."""
        return sum(not (np.isfinite(row.loss) and np.isfinite(row.grad_norm)) for row in self.rows)

    def add_preview(self, step: int, values: dict[str, float], attrs: dict[str, dict]) -> None:
        """The values a preview measured after ``step`` steps, each named ``preview_<name>`` in the file."""
        self.previews.append((step, dict(values)))
        self.preview_attrs.update(attrs)

    def __len__(self) -> int:
        return len(self.rows)

    def last(self) -> Row:
        return self.rows[-1]

    def to_dataset(self, attrs: dict) -> xr.Dataset:
        def column(name: str) -> np.ndarray:
            return np.array([getattr(row, name) for row in self.rows], dtype=np.float32)

        def described(long_name: str, units: str | None) -> dict:
            return {"long_name": long_name, **({"units": units} if units else {})}

        variables = {name: ("step", column(name), described(*about)) for name, about in COLUMNS.items()}
        kl = np.array([row.kl for row in self.rows], dtype=np.float32).reshape(-1, self.levels)
        variables["kl"] = (("step", "level"), kl, described("KL[q || p] of each level", "nats per frame"))
        steps = np.array([row.step for row in self.rows], dtype=np.int64)
        coords = {"step": steps, "level": np.arange(1, self.levels + 1)}
        if self.previews:
            coords[PREVIEW + "step"] = np.array([step for step, _ in self.previews], dtype=np.int64)
            for name, about in self.preview_attrs.items():  # NaN where a preview lacks the value
                values = [values.get(name, np.nan) for _, values in self.previews]
                variables[PREVIEW + name] = (PREVIEW + "step", np.array(values, dtype=np.float32), about)
        return xr.Dataset(variables, coords=coords, attrs={**provenance(TITLE), **attrs})

    def save(self, path: Path, attrs: dict) -> None:
        write_netcdf(self.to_dataset(attrs), path)

    @classmethod
    def load(cls, path: Path, levels: int, upto_step: int) -> "History":
        """The saved history up to ``upto_step`` (later rows belong to steps the checkpoint never saw). UserError naming
        the file when it is unreadable or not what ``save`` writes for ``levels`` levels."""
        history = cls(levels)
        if not Path(path).exists() and not Path(path).is_symlink():
            return history
        with open_netcdf(path, "training history") as ds:
            try:
                check_history(ds, levels)
                ds = ds.sel(step=ds.step <= upto_step).load()
            except (OSError, ValueError, KeyError, RuntimeError) as error:
                reason = printable(" ".join(str(error).split()))
                raise UserError(f"cannot read training history {printable(str(path))}: {reason}") from error
        columns = {name: ds[name].values.astype(float) for name in COLUMNS}
        history.extend([Row(step=int(step), kl=ds.kl.values[i], **{name: float(c[i]) for name, c in columns.items()})
                        for i, step in enumerate(ds.step.values)])
        history.load_previews(ds, upto_step)
        return history

    def load_previews(self, ds: xr.Dataset, upto_step: int) -> None:
        """The previews of a checked history ``ds`` up to ``upto_step``."""
        names = preview_names(ds)
        if not names:
            return
        kept = ds[PREVIEW + "step"].values <= upto_step
        self.preview_attrs = {name: {k: v for k, v in ds[PREVIEW + name].attrs.items() if k in ("long_name", "units")}
                              for name in names}
        values = {name: ds[PREVIEW + name].values.astype(float)[kept] for name in names}
        self.previews = [(int(step), {name: float(column[i]) for name, column in values.items()})
                         for i, step in enumerate(ds[PREVIEW + "step"].values[kept])]


# Every variable ``to_dataset`` writes, with its dims; all are floating point.
VARIABLES = {**{name: ("step",) for name in COLUMNS}, "kl": ("step", "level")}


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
    for dim in ("step", PREVIEW + "step"):
        steps = ds[dim].values if dim in ds.coords else np.zeros(0, dtype=np.int64)
        if steps.dtype.kind not in "iu" or (np.diff(steps) <= 0).any():
            raise ValueError(f"its {dim}s are not increasing integers")
    for name in preview_names(ds):
        variable = ds[PREVIEW + name]
        if variable.dims != (PREVIEW + "step",) or variable.dtype.kind != "f":
            raise ValueError(f"variable {PREVIEW + name!r} is not floating point along {PREVIEW}step")


def preview_names(ds: xr.Dataset) -> list[str]:
    """The names (without the prefix) of the preview variables of a history."""
    return [str(name)[len(PREVIEW):] for name in ds.data_vars if str(name).startswith(PREVIEW)]
