"""The figure of an evaluation file (what ``pyro-cwvae evaluate`` writes), ``evaluation.png``: every run on one
axis, as the paper's Figures 1 and 5 compare models, the baselines dashed and the accuracy on true frames dotted.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pyro_cwvae.errors import UserError
from pyro_cwvae.files.netcdf import EVALUATION_TITLE, has_title
from pyro_cwvae.plots.files import check_variables, read_checked, save_figure
from pyro_cwvae.prediction.time_axis import frames_ahead

CURVES = (("ssim", "SSIM"), ("psnr", "PSNR (dB)"), ("lpips", "LPIPS (lower is better)"))
ACCURACIES = (("digit_accuracy", "digit accuracy"), ("room_accuracy", "room accuracy"))
BASELINE_STYLE = {"last_frame": ("0.35", "--"), "random_frame": ("0.65", "--")}
"""Colour and line of each baseline the file holds (``<metric>_<baseline>``)."""


def curve(name: str) -> dict[str, tuple[tuple[str, ...], str]]:
    """A per-time metric of every run and its baselines: their dims and dtype kind (``plots.files.check_variables``)."""
    return {name: (("run", "time"), "f"), **{f"{name}_{baseline}": (("time",), "f") for baseline in BASELINE_STYLE}}


REQUIRED = {**curve("ssim"), **curve("psnr"), "kl_table": (("run", "level"), "f"), "is_context": (("time",), "b")}
OPTIONAL = {  # each group checked whole when its first variable is in the file
    "lpips": curve("lpips"),
    **{name: {**curve(name), f"{name}_truth": (("time",), "f")} for name, _ in ACCURACIES},
    "fvd": {"fvd": (("run", "window"), "f"), "fvd_horizon": (("run",), "f"), "window_start": (("window",), "i"),
            "window_stop": (("window",), "i"), **{f"fvd_{baseline}": (("window",), "f") for baseline in BASELINE_STYLE},
            **{f"fvd_horizon_{baseline}": ((), "f") for baseline in BASELINE_STYLE}},
    "iwae": {"iwae": (("run", "sequence"), "f"), "elbo": (("run", "sequence"), "f")},
}
"""What the figure reads of an evaluation file: variables, their dims and dtype kinds."""


def is_evaluation(path: Path) -> bool:
    """Whether ``path`` is a NetCDF file written by ``pyro-cwvae evaluate`` (False for anything else)."""
    return has_title(path, EVALUATION_TITLE)


def read_evaluation(path: Path) -> xr.Dataset:
    """Load an evaluation file; ``UserError`` naming the file when it lacks what the figure reads or holds it with
    other dims or dtypes."""
    return read_checked(path, "evaluation file", check_evaluation)


def check_evaluation(ds: xr.Dataset) -> None:
    """``UserError`` unless ``ds`` holds, with their dims and dtypes, every variable the figure reads, one run or
    more, and integer labels."""
    if missing := next((name for name in REQUIRED if name not in ds.variables), None):
        raise UserError(f"an evaluation file needs the variable {missing!r}")
    if ds.sizes.get("run", 0) < 1:
        raise UserError("the evaluation file holds no run")
    present = {}
    for group, variables in OPTIONAL.items():
        if group in ds.variables:
            for name in variables:
                if name not in ds.variables and not name.endswith("_truth"):  # the ceiling is optional
                    raise UserError(f"an evaluation file with {group!r} needs the variable {name!r}")
            present.update({name: kind for name, kind in variables.items() if name in ds.variables})
    check_variables(ds, {**REQUIRED, **present}, ("time", "level"))


def write_evaluation_figures(ds: xr.Dataset, out_dir: Path) -> list[Path]:
    """Write ``evaluation.png`` into ``out_dir`` (made if missing); returns the paths written."""
    return [save_figure(plot_evaluation(ds), Path(out_dir) / "evaluation.png")]


def plot_evaluation(ds: xr.Dataset) -> plt.Figure:
    """The figure: per-time curves in the first row; accuracy, FVD per window and the KL table in the second."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    colours = {run: f"C{i}" for i, run in enumerate(ds.run.values)}
    for ax, (name, label) in zip(axes[0], CURVES):
        plot_curves(ax, ds, name, label, colours)
    accuracy = next(((name, label) for name, label in ACCURACIES if name in ds), None)
    if accuracy is None:
        absent(axes[1, 0], "no high-level accuracy for this dataset")
    else:
        plot_curves(axes[1, 0], ds, *accuracy, colours)
    plot_fvd(axes[1, 1], ds, colours)
    plot_kl_table(axes[1, 2], ds, colours)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{ds.attrs.get('dataset', '')}: {ds.attrs.get('sequences', '?')} test sequences, "
                 f"{ds.attrs.get('context', '?')} context frames, {ds.attrs.get('protocol', '?')} protocol",
                 fontsize=11)
    fig.tight_layout()
    return fig


def plot_curves(ax: plt.Axes, ds: xr.Dataset, name: str, label: str, colours: dict) -> None:
    """``name`` of every run against the frames predicted, the baselines dashed, the ceiling dotted."""
    if name not in ds:
        absent(ax, f"no {label.split(' (')[0]} in this file (--no-perceptual?)")
        return
    future = ~ds.is_context.values
    steps = frames_ahead(ds)[future]
    for run in ds.run.values:
        ax.plot(steps, ds[name].sel(run=run).values[future], color=colours[run], label=str(run), linewidth=1.2)
    for baseline, (colour, style) in BASELINE_STYLE.items():
        ax.plot(steps, ds[f"{name}_{baseline}"].values[future], style, color=colour,
                label=baseline.replace("_", " "), linewidth=1)
    if f"{name}_truth" in ds:
        ax.plot(steps, ds[f"{name}_truth"].values[future], ":", color="black", label="true frames", linewidth=1)
        ax.legend(fontsize=7)
    ax.set_xlabel("frames predicted")
    ax.set_ylabel(label)
    ax.set_title(short_aggregation(ds, name), fontsize=8)
    ax.grid(alpha=0.3)


def short_aggregation(ds: xr.Dataset, name: str) -> str:
    """How the curves of ``name`` were taken, in a few words."""
    samples = ds.attrs.get("samples", "?")
    if "best of" in ds[name].attrs.get("aggregation", ""):
        return f"best of {samples} sample(s) per sequence, mean over sequences"
    return f"mean over {samples} sample(s) and the sequences"


def plot_fvd(ax: plt.Axes, ds: xr.Dataset, colours: dict) -> None:
    """FVD per window: one bar per run, the baselines as dashed lines over each window."""
    if "fvd" not in ds:
        absent(ax, "no FVD in this file (--no-perceptual?)")
        return
    windows = np.arange(ds.sizes["window"])
    width = 0.8 / ds.sizes["run"]
    for i, run in enumerate(ds.run.values):
        horizon = float(ds.fvd_horizon.sel(run=run))
        ax.bar(windows - 0.4 + width * (i + 0.5), np.nan_to_num(ds.fvd.sel(run=run).values), width,
               color=colours[run], label=f"{run} (horizon {horizon:.4g})")
    for baseline, (colour, style) in BASELINE_STYLE.items():
        ax.hlines(ds[f"fvd_{baseline}"].values, windows - 0.45, windows + 0.45, colors=colour, linestyles=style,
                  label=f"{baseline.replace('_', ' ')} (horizon {float(ds[f'fvd_horizon_{baseline}']):.4g})")
    context = int(ds.is_context.sum())
    ax.set_xticks(windows, [f"{start - context + 1}-{stop - context}"
                            for start, stop in zip(ds.window_start.values, ds.window_stop.values)],
                  fontsize=7, rotation=45, ha="right")
    ax.set_xlabel("frames predicted (window)")
    ax.set_ylabel("FVD (lower is better)")
    ax.set_title(f"FVD of {ds.fvd.attrs.get('clip_frames', '?')}-frame clips per window", fontsize=8)
    ax.legend(fontsize=7)


def plot_kl_table(ax: plt.Axes, ds: xr.Dataset, colours: dict) -> None:
    """The KL of each level per training sequence (Table 1), one bar per run; the bounds in the legend."""
    levels = ds.level.values
    width = 0.8 / ds.sizes["run"]
    for i, run in enumerate(ds.run.values):
        label = str(run)
        if "iwae" in ds:
            label += (f": IWAE_{ds.iwae.attrs.get('particles', 'K')} {float(ds.iwae.sel(run=run).mean()):.4g}, "
                      f"ELBO {float(ds.elbo.sel(run=run).mean()):.4g} nats/frame")
        ax.bar(np.arange(len(levels)) - 0.4 + width * (i + 0.5), np.nan_to_num(ds.kl_table.sel(run=run).values),
               width, color=colours[run], label=label)
    ax.set_xticks(np.arange(len(levels)), [str(level) for level in levels])
    ax.set_xlabel("level")
    ax.set_ylabel("KL (nats)")
    frames = ds.kl_table.attrs.get("frames_per_sequence", "?")
    ax.set_title(f"KL per training sequence of {frames} frames (Table 1)", fontsize=8)
    ax.legend(fontsize=7)


def absent(ax: plt.Axes, text: str) -> None:
    """An empty panel that says what is missing."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
