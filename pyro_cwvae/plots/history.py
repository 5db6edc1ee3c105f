"""Figure of a training history (a run's ``history.nc``), ``training.png``: the loss, the KL of each level (log
scale: a collapsing level shows as a falling line) and the share of the KL above level 1, which says whether the
slow levels are in use (the paper's 3-level Moving MNIST model: about 12 %), as running means against the step."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pyro_cwvae.errors import UserError
from pyro_cwvae.files.netcdf import has_title, open_netcdf
from pyro_cwvae.files.reading import printable
from pyro_cwvae.plots.files import save_figure
from pyro_cwvae.training.history import TITLE, check_history


def is_history(path: Path) -> bool:
    """Whether ``path`` is a NetCDF training history (False for anything else)."""
    return has_title(path, TITLE)


def read_history(path: Path) -> xr.Dataset:
    """Load a history file; ``UserError`` naming the file when it is not what training writes or has no step."""
    with open_netcdf(path, "training history") as ds:
        try:
            check_history(ds, ds.sizes.get("level", 0))
            ds = ds.load()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise UserError(f"cannot read training history {printable(str(path))}: "
                            f"{printable(' '.join(str(error).split()))}") from error
    if ds.sizes["step"] < 1:
        raise UserError(f"{path}: the training history has no step yet")
    return ds


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over the last ``window`` entries along the first axis (fewer at the start)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0, axis=0), axis=0)
    counts = np.minimum(np.arange(1, len(values) + 1), window).reshape(-1, *([1] * (values.ndim - 1)))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (cumulative[1:] - cumulative[starts]) / counts


def write_history_figure(ds: xr.Dataset, out_dir: Path, window: int | None = None) -> list[Path]:
    """Write ``training.png`` into ``out_dir`` (made if missing); returns the paths written."""
    return [save_figure(plot_history(ds, window), Path(out_dir) / "training.png")]


def plot_history(ds: xr.Dataset, window: int | None = None) -> plt.Figure:
    """Loss and reconstruction, KL per level, and the share of the KL above level 1, against the step."""
    steps = ds.step.values
    window = window or max(1, len(steps) // 50)  # about 50 independent points along the run
    fig, (terms, kls, share) = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, label in (("loss", "negative ELBO"), ("reconstruction", "-log p(x | s^1)")):
        terms.plot(steps, smoothed(ds[name].values, window), label=label)
    terms.set(xlabel="training step", ylabel="nats per frame", title="loss and reconstruction")
    terms.legend(fontsize="small")

    kl = ds.kl.values
    for i, level in enumerate(ds.level.values):
        kls.plot(steps, smoothed(kl[:, i], window), label=f"level {level}")
    kls.set(xlabel="training step", ylabel="nats per frame", title="KL of each level", yscale="log")
    kls.legend(fontsize="small")

    total = smoothed(kl, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        above = 100 * total[:, 1:].sum(axis=1) / total.sum(axis=1)
    share.plot(steps, above)
    share.set(xlabel="training step", ylabel="%", title="share of the KL above level 1", ylim=(0, None))
    if ds.sizes["level"] == 1:
        share.text(0.5, 0.5, "one level", transform=share.transAxes, ha="center")
    fig.suptitle(f"Training history, running mean of {window} step(s)", fontsize=10)
    fig.tight_layout()
    return fig
