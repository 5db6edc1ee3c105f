"""Figure 1 of the paper: prediction quality against the horizon for 3-level CW-VAEs with k 2, 4, 6 and 8.

    python -m experiments.factor                    # CPU size: the demo preset, 300 steps per k, 100 frames
    python -m experiments.factor --paper            # the paper's: mmnist preset, predictions to frame 1000
    python -m experiments.factor --settings k2,k8 --budget 1000 --horizon 300

The four models have the same networks and parameters; only the clock differs. Each trains resumably, then
predicts open loop after a context that its top level can filter whole (the official code requires a multiple
of k**2: the smallest one from 36 frames on, so 36, 48, 36 and 64 frames), and is scored against the frames
predicted ahead: SSIM and PSNR under the paper's protocol (best of the samples), the digit classifier's
pair accuracy, and the copy-last-frame and random-frame baselines. At CPU size the training sequences have
128 frames, batch 2 (the demo's 72 would hold one top step of k 8, whose transition would then never train).
Writes OUT/factor-SCALE.nc (each measure per setting and horizon) and OUT/factor-SCALE.png, and prints the means
over spans of the horizon.
"""
from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402

from experiments.common import content_rollout, run_script, start, train_setting  # noqa: E402
from experiments.results import (ahead, curve, markdown, plot_curves, results_dataset, span_means,  # noqa: E402
                                 stacked, write_results)

# name: (what it is, the options it changes on the preset)
SETTINGS = {f"k{k}": (f"3 levels, temporal abstraction factor {k}", {"levels": 3, "factor": k}) for k in (2, 4, 6, 8)}
# At CPU size: two top-level steps of k 8 (8**2 frames) in every training sequence, so that its transition trains
# (with one, it gets no gradient: Config.warnings); the same sequences as levels.py, which shares the k 6 run.
DEMO_SIZE = {"seq_len": 128, "batch_size": 2}
MEASURES = ("ssim_best", "psnr_best", "digit_accuracy")
BASELINES = ("last_frame", "random_frame")
LONGEST_CONTEXT = 64  # k 8's: every k predicts the same number of frames, at paper size to frame 1000


def main(argv=None) -> None:
    names, plan, accuracy = start(__doc__, SETTINGS, argv)
    evaluations = []
    for name in names:
        print(f"{name}: {SETTINGS[name][0]}", flush=True)
        options = {**SETTINGS[name][1], **(DEMO_SIZE if plan.scale.preset == "demo" else {})}
        run, cfg = train_setting(options, plan)
        top = cfg.clock.top_period
        evaluations.append(content_rollout(run, plan, accuracy, context=-(-cfg.context // top) * top,
                                    horizon=plan.horizon_after(LONGEST_CONTEXT)))
    results = collect(names, evaluations, plan)
    write_results(results, figure(results), plan, "factor")
    print(summary(results))


def collect(names: list[str], evaluations: list[xr.Dataset], plan) -> xr.Dataset:
    """Each measure and its baselines against the horizon, per setting; the context and steps of each."""
    predicted = [ahead(evaluation) for evaluation in evaluations]
    names_of = [*MEASURES, *(f"{metric}_{baseline}" for metric in ("ssim", "psnr", "digit_accuracy")
                             for baseline in BASELINES)]
    variables = {name: stacked([curve(ds, name) for ds in predicted], names) for name in names_of}
    variables["context"] = ("setting", [int(ds.attrs["context"]) for ds in evaluations],
                            {"units": "frames", "long_name": "frames the guide filtered before predicting"})
    variables["trained_steps"] = ("setting", [int(ds.attrs["checkpoint_step"]) for ds in evaluations],
                                  {"long_name": "training steps of the checkpoint evaluated"})
    factor = ("setting", [SETTINGS[name][1]["factor"] for name in names],
              {"long_name": "temporal abstraction factor k"})
    return results_dataset(variables, names, SETTINGS, plan, "pyro-cwvae: prediction quality against the horizon "
                           "for k 2, 4, 6, 8 (paper Figure 1; experiments/factor.py)", factor=factor)


def summary(results: xr.Dataset) -> str:
    """Each measure's mean over spans of the horizon, per k and for the baselines (averaged over the settings)."""
    spans = list(span_means(results.ssim_best.isel(setting=0)))
    header = ["model", "context", *[f"{label} {span}" for label in ("SSIM", "PSNR", "digits") for span in spans]]
    rows = [[name, int(results.context.sel(setting=name)),
             *[value for measure in MEASURES for value in span_means(results[measure].sel(setting=name)).values()]]
            for name in results.setting.values]
    for baseline in BASELINES:
        rows.append([baseline.replace("_", " "), "as each k", *[
            value for metric in ("ssim", "psnr", "digit_accuracy")
            for value in span_means(results[f"{metric}_{baseline}"].mean("setting")).values()]])
    return markdown(header, rows)


def figure(results: xr.Dataset) -> plt.Figure:
    """Figure 1: SSIM, PSNR and digit accuracy against the frames predicted, one line per k, with baselines."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for axis, (measure, metric) in zip(axes, [("ssim_best", "ssim"), ("psnr_best", "psnr"),
                                              ("digit_accuracy", "digit_accuracy")]):
        plot_curves(axis, results, measure, {f"{metric}_{baseline}": baseline.replace("_", " ")
                                             for baseline in BASELINES})
    fig.suptitle(f"Prediction quality against the horizon ({results.attrs['scale']}, "
                 f"{results.attrs['budget']} steps per k)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    run_script(main)
