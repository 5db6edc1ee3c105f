"""Figure 7 of the paper: what the top levels hold, by predicting with them drawn from the prior.

    python -m experiments.content                   # CPU size: the demo's 3-level model, 300 steps, 100 frames
    python -m experiments.content --paper           # the paper's: mmnist preset, predictions to frame 1000

A 3-level CW-VAE (k 6; the same run as baselines.py's CW-VAE, trained here if it is not there yet) predicts
after 8 context frames with the top 0, 1 or 2 levels drawn from their prior instead of filtered from the context
(``rollout(..., prior_levels=N)``), and after 36 frames with every level filtered, as the reference. Whatever a
blind level holds follows the training distribution instead of the context: if the digits' identities live at
the top, the classifier's pair accuracy drops to chance while the positions (the centre of the ink) stay. With
k 6 a level filters only the steps whose 6**(l-1) frames lie inside the context, so 8 frames give level 3 no
step to filter: prior levels 0 and 1 then predict the same. Writes OUT/content-SCALE.nc (accuracy and position
error per setting and horizon, with baselines, and the first sequence's frames) and OUT/content-SCALE.png,
and prints the means over spans of the horizon.
"""
from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from experiments.common import content_rollout, run_script, start, train_setting  # noqa: E402
from experiments.results import (ahead, curve, markdown, plot_curves, results_dataset, span_means,  # noqa: E402
                                 stacked, write_results)

MODEL = {"levels": 3, "factor": 6}  # baselines.py's CW-VAE: the same run when both use one --out
# name: (what it is, the rollout's options: context frames and levels drawn from the prior)
SETTINGS = {
    "filtered-36": ("36 context frames, every level filtered", {"context": 36, "prior_levels": 0}),
    "filtered-8": ("8 context frames, every level filtered where a whole step fits", {"context": 8, "prior_levels": 0}),
    "top-blind": ("8 context frames, level 3 from the prior", {"context": 8, "prior_levels": 1}),
    "top-2-blind": ("8 context frames, levels 2 and 3 from the prior", {"context": 8, "prior_levels": 2}),
}
MEASURES = ("digit_accuracy", "position_error")
BASELINES = {"digit_accuracy": ("truth", "random_frame"), "position_error": ("last_frame", "random_frame")}
EXAMPLE_FRAMES = 8  # frames of the first test sequence that the figure shows, spread geometrically over the horizon


def main(argv=None) -> None:
    names, plan, accuracy = start(__doc__, SETTINGS, argv)
    run, _ = train_setting(MODEL, plan)
    horizon = plan.horizon_after(max(SETTINGS[name][1]["context"] for name in names))
    evaluations = []
    for name in names:
        print(f"{name}: {SETTINGS[name][0]}", flush=True)
        evaluations.append(content_rollout(run, plan, accuracy, horizon=horizon, **SETTINGS[name][1]))
    results = collect(names, evaluations, run, plan)
    write_results(results, figure(results), plan, "content")
    print(summary(results))


def collect(names: list[str], evaluations: list[xr.Dataset], run: str, plan) -> xr.Dataset:
    """Accuracy and position error against the horizon per setting, with their baselines, and the frames of the
    first test sequence at the horizons the figure shows."""
    predicted = [ahead(evaluation) for evaluation in evaluations]
    wanted = [*MEASURES, *(f"{measure}_{baseline}" for measure in MEASURES for baseline in BASELINES[measure])]
    variables = {name: stacked([curve(ds, name) for ds in predicted], names) for name in wanted}
    shown = np.unique(np.geomspace(1, predicted[0].sizes["horizon"], EXAMPLE_FRAMES).round().astype(int))
    for name in ("example_prediction", "example_truth"):  # on their own axis: the curves keep every horizon
        variables[name] = stacked([ds[name].sel(horizon=shown).rename(horizon="shown") for ds in predicted], names)
    variables["context"] = ("setting", [int(ds.attrs["context"]) for ds in evaluations],
                            {"units": "frames", "long_name": "frames the guide filtered before predicting"})
    variables["prior_levels"] = ("setting", [int(ds.attrs["prior_levels"]) for ds in evaluations],
                                 {"long_name": "top levels drawn from the prior, blind to the context"})
    results = results_dataset(variables, names, SETTINGS, plan, "pyro-cwvae: content held by the top levels, "
                              "predictions with them drawn from the prior (paper Figure 7; experiments/content.py)")
    results.shown.attrs.update(units="frames", long_name="frames predicted ahead in the example frames")
    results.attrs.update(run=run, trained_steps=int(evaluations[0].attrs["checkpoint_step"]))
    return results


def summary(results: xr.Dataset) -> str:
    """Accuracy and position error over spans of the horizon per setting, then the baselines."""
    spans = list(span_means(results.digit_accuracy.isel(setting=0)))
    header = ["setting", "context", "prior levels",
              *[f"{label} {span}" for label in ("digits", "position error (px)") for span in spans]]
    rows = [[name, int(results.context.sel(setting=name)), int(results.prior_levels.sel(setting=name)),
             *[value for measure in MEASURES for value in span_means(results[measure].sel(setting=name)).values()]]
            for name in results.setting.values]
    for measure in MEASURES:
        for baseline in BASELINES[measure]:
            cells = [*span_means(results[f"{measure}_{baseline}"].isel(setting=0)).values()]
            before, after = ([], [""] * len(spans)) if measure == "digit_accuracy" else ([""] * len(spans), [])
            rows.append([f"{baseline.replace('_', ' ')} ({measure.split('_')[0]})", "", "", *before, *cells, *after])
    return markdown(header, rows)


def figure(results: xr.Dataset) -> plt.Figure:
    """Accuracy and position error against the horizon, and the first sequence's frames: the truth after each
    context, then a sample of each setting."""
    shown = results.shown.values
    rows = example_rows(results)
    fig = plt.figure(figsize=(max(10.0, 1.2 * len(shown)), 4.5 + 1.2 * len(rows)))
    top, bottom = fig.add_gridspec(2, 1, height_ratios=[4, 1.2 * len(rows)])
    for axis, measure in zip(top.subgridspec(1, 2).subplots(), MEASURES):
        plot_curves(axis, results, measure, {f"{measure}_{baseline}": baseline.replace("_", " ")
                                             for baseline in BASELINES[measure]})
    grid = np.array(bottom.subgridspec(len(rows), len(shown), wspace=0.05).subplots()).reshape(len(rows), len(shown))
    for axes, (label, frames) in zip(grid, rows):
        for axis, horizon in zip(axes, shown):
            axis.imshow(frames.sel(shown=horizon).values[0], cmap="gray", vmin=0, vmax=255)
            axis.set(xticks=[], yticks=[])
        axes[0].set_ylabel(label, fontsize="x-small")
    for axis, horizon in zip(grid[0], shown):
        axis.set_title(f"+{horizon}", fontsize="small")
    fig.suptitle(f"Predictions with the top levels blind to the context ({results.attrs['scale']}, "
                 f"{results.attrs['trained_steps']} steps)")
    return fig


def example_rows(results: xr.Dataset) -> list[tuple[str, xr.DataArray]]:
    """The figure's rows of example frames: the truth whenever the context changes, then each setting's sample."""
    rows, context = [], None
    for name in results.setting.values:
        if int(results.context.sel(setting=name)) != context:
            context = int(results.context.sel(setting=name))
            rows.append((f"truth after\n{context} frames", results.example_truth.sel(setting=name)))
        rows.append((str(name), results.example_prediction.sel(setting=name, sample=0)))
    return rows


if __name__ == "__main__":
    run_script(main)
