"""The results of the paper's analyses: curves against the frames predicted ahead, the NetCDF file with a
``setting`` dimension, the markdown table and the figure."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import xarray as xr

from experiments.common import Plan
from pyro_cwvae.files.atomic import atomic_path
from pyro_cwvae.files.netcdf import provenance, write_netcdf
from pyro_cwvae.prediction import frames_ahead

matplotlib.use("Agg")  # the figures go to files: no display needed
import matplotlib.pyplot as plt  # noqa: E402

HORIZON_SPANS = ((1, 36), (37, 100), (101, 1000))
"""Spans of frames predicted ahead over which the tables average."""


def ahead(ds: xr.Dataset) -> xr.Dataset:
    """The predicted frames of an evaluation on a ``horizon`` axis: frames predicted ahead (1 is the first)."""
    future = ~ds.is_context.values
    predicted = ds.drop_dims(["level"], errors="ignore").isel(time=future)
    horizon = xr.DataArray(frames_ahead(ds)[future], dims="time",
                           attrs={"units": "frames", "long_name": "frames predicted ahead of the context"})
    return predicted.assign_coords(horizon=horizon).swap_dims(time="horizon").drop_vars("time")


def curve(ds: xr.Dataset, name: str) -> xr.DataArray:
    """Measure ``name`` of an ``ahead`` evaluation against the horizon, averaged over samples and sequences."""
    values = ds[name].where(np.isfinite(ds[name]))  # an exact prediction has an infinite PSNR
    return values.mean([dim for dim in ("sample", "sequence") if dim in values.dims]).assign_attrs(ds[name].attrs)


def span_means(values: xr.DataArray) -> dict[str, float]:
    """Means of a curve over the ``HORIZON_SPANS`` it reaches, keyed 'first-last' (cut to the horizon)."""
    longest = int(values.horizon.max())
    means = {}
    for first, last in HORIZON_SPANS:
        if first <= longest:
            last = min(last, longest)
            means[f"{first}-{last}"] = float(values.sel(horizon=slice(first, last)).mean())
    return means


def results_dataset(variables: dict[str, xr.DataArray], names: list[str], settings: dict, plan: Plan,
                    title: str, **coords) -> xr.Dataset:
    """One experiment's results: ``variables`` with a leading ``setting`` dim; the settings, scale and budget in
    the attributes."""
    results = xr.Dataset(variables).assign_coords(setting=names, **coords)
    results.setting.attrs["long_name"] = "what each setting changes: see the attribute 'settings'"
    results.attrs.update(
        **provenance(title), scale=plan.scale.name, preset=plan.scale.preset, budget=plan.budget,
        budget_units="training steps per setting", sequences=plan.prediction.sequences,
        samples=plan.prediction.samples,
        settings=json.dumps({name: {"about": settings[name][0], "options": settings[name][1]} for name in names}))
    return results


def stacked(values: list[xr.DataArray], names: list[str]) -> xr.DataArray:
    """Per-setting arrays along a new ``setting`` dim (NaN-padded where they differ, e.g. levels), attrs kept."""
    return xr.concat(values, dim="setting", join="outer").assign_coords(setting=names).assign_attrs(values[0].attrs)


def write_results(results: xr.Dataset, figure: plt.Figure, plan: Plan, experiment: str) -> tuple[Path, Path]:
    """Write ``OUT/EXPERIMENT-SCALE.nc`` and ``.png`` atomically; the figure is closed."""
    stem = plan.out / f"{experiment}-{plan.scale.name}"
    write_netcdf(results, stem.with_suffix(".nc"))
    with atomic_path(stem.with_suffix(".png")) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return stem.with_suffix(".nc"), stem.with_suffix(".png")


def markdown(header: list[str], rows: list[list]) -> str:
    """A markdown table; numbers shown with three significant digits."""
    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def plot_curves(axis: plt.Axes, results: xr.Dataset, measure: str, references: dict[str, str]) -> None:
    """``results[measure]`` (setting, horizon) against the horizon, one line per setting, and each reference
    (name: label) in black, averaged over the settings."""
    for name in results.setting.values:
        axis.plot(results.horizon, results[measure].sel(setting=name), label=str(name))
    for (reference, label), style in zip(references.items(), ("--", ":", "-.")):
        axis.plot(results.horizon, results[reference].mean("setting"), "k" + style, label=label)
    units = results[measure].attrs.get("units", "1")
    axis.set(xlabel="frames predicted", ylabel=measure.replace("_", " ") + ("" if units == "1" else f" ({units})"))
    axis.legend(fontsize="x-small")


def kl_share(kl_table: np.ndarray) -> float:
    """The share of the KL at levels 2 and above, of a KL table (level 1 first; NaN at levels a model lacks)."""
    kl = kl_table[np.isfinite(kl_table)]
    return float(kl[1:].sum() / kl.sum()) if kl.sum() > 0 else float("nan")
