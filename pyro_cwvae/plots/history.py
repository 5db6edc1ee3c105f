"""Figure of a training history (a run's ``history.nc``), ``training.png``: the loss, the KL of each level (log
scale: a collapsing level shows as a falling line) and the share of the KL above level 1, which says whether the
slow levels are in use (the paper's 3-level Moving MNIST model: about 12 %), as running means against the step.
When the history holds previews, a second row draws their open-loop SSIM, PSNR and accuracy (where measured) against
the baselines."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pyro_cwvae.errors import UserError
from pyro_cwvae.files.netcdf import ROLLOUT_TITLE, has_title, open_netcdf
from pyro_cwvae.files.reading import printable
from pyro_cwvae.plots.files import save_figure
from pyro_cwvae.training.history import HISTORY, PREVIEW, TITLE, check_history, preview_names


def is_history(path: Path) -> bool:
    """Whether ``path`` is a NetCDF training history, or would be: a file named ``history.nc`` whose title is
    unreadable (a damaged one is then refused as what its name says it is); False for anything else."""
    return has_title(path, TITLE) or (Path(path).name == HISTORY and not has_title(path, ROLLOUT_TITLE))


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
    """Loss and reconstruction, KL per level, and the share of the KL above level 1, against the step; below them
    the previews, when the history holds any."""
    window = window or max(1, ds.sizes["step"] // 50)  # about 50 independent points along the run
    previews = PREVIEW + "step" in ds.dims
    fig, axes = plt.subplots(2 if previews else 1, 3, figsize=(15, 7.6 if previews else 3.8), squeeze=False)
    plot_terms(axes[0, 0], ds, window)
    plot_kls(axes[0, 1], axes[0, 2], ds, window)
    if previews:
        plot_previews(fig, axes, ds)
    fig.suptitle(f"Training history, running mean of {window} step(s)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_terms(terms: plt.Axes, ds: xr.Dataset, window: int) -> None:
    """The running means of the loss and of the reconstruction term."""
    for name, label in (("loss", "negative ELBO"), ("reconstruction", "-log p(x | s^1)")):
        terms.plot(ds.step.values, smoothed(ds[name].values, window), label=label)
    terms.set(xlabel="training step", ylabel="nats per frame", title="loss and reconstruction")
    terms.legend(fontsize="small")


def plot_kls(kls: plt.Axes, share: plt.Axes, ds: xr.Dataset, window: int) -> None:
    """The running mean of the KL of each level, and the share of their sum above level 1."""
    steps, kl = ds.step.values, ds.kl.values
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


# Each baseline of a preview: (suffix of its variable, label, colour, line style).
PREVIEW_BASELINES = (("_last_frame", "last context frame repeated", "C1", "--"),
                     ("_random_frame", "random training frame", "C2", ":"))


def preview_accuracy(ds: xr.Dataset) -> str | None:
    """The name of the accuracy the previews measured (digit_accuracy, room_accuracy), or None."""
    extra = [name for name in preview_names(ds) if name not in ("psnr", "ssim")
             and not name.endswith(tuple(suffix for suffix, *_ in PREVIEW_BASELINES))]
    return extra[0] if extra else None


def plot_previews(fig: plt.Figure, axes: np.ndarray, ds: xr.Dataset) -> None:
    """SSIM, PSNR and the accuracy (when measured; its axes removed otherwise) of the previews in the second row of
    ``axes``, each on the steps of the panel above it."""
    row = axes[1]
    for top, bottom in zip(axes[0], row):
        bottom.sharex(top)  # a preview lines up with the losses of its step
    plot_preview(row[0], ds, "ssim", "SSIM", "SSIM")
    plot_preview(row[1], ds, "psnr", "PSNR", "PSNR (dB)")
    accuracy = preview_accuracy(ds)
    if accuracy is None:
        fig.delaxes(row[2])
    else:
        plot_preview(row[2], ds, accuracy, accuracy.replace("_", " "), "share correct")
        row[2].set_ylim(-0.02, 1.02)  # a share: 0 to 1, with room for a line at either end


def plot_preview(ax: plt.Axes, ds: xr.Dataset, name: str, shown: str, ylabel: str) -> None:
    """One preview score against the step, with its baselines (those the file holds)."""
    steps = ds[PREVIEW + "step"].values
    marker = "." if len(steps) == 1 else None  # a lone preview leaves a baseline's line without length
    curves = [(name, dict(linestyle="-", marker="o", color="C0", label="CW-VAE"))]
    curves += [(name + suffix, dict(linestyle=style, marker=marker, color=colour, label=label))
               for suffix, label, colour, style in PREVIEW_BASELINES]
    for variable, style in curves:
        if PREVIEW + variable in ds:
            values = ds[PREVIEW + variable].values
            ax.plot(steps, np.where(np.isfinite(values), values, np.nan), **style)  # NaN and inf leave gaps
    ax.set(xlabel="training step", ylabel=ylabel, title=f"previews: {shown} of open-loop predictions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
