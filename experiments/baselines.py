"""Figure 5b of the paper: digit-pair accuracy against the horizon, CW-VAE against RSSM and NoTmpAbs.

    python -m experiments.baselines                 # CPU size: the demo preset, 300 steps each, 100 frames
    python -m experiments.baselines --paper         # the paper's: mmnist preset, predictions to frame 1000
    python -m experiments.baselines --settings cwvae,rssm --budget 1000 --horizon 500

CW-VAE (3 levels, k 6), RSSM (1 level) and NoTmpAbs (3 levels, k 1: the hierarchy without temporal
abstraction) train for the same number of steps on generated Moving MNIST (resumably), then predict open loop
after 36 context frames. The digit classifier reads every predicted frame; the paper finds RSSM best at first
and CW-VAE best after about 200 frames, stable to frame 1000. Writes OUT/baselines-SCALE.nc (accuracy, SSIM and
PSNR per setting and horizon; the classifier on the true frames and on random frames as ceiling and chance)
and OUT/baselines-SCALE.png, and prints the means over spans of the horizon.
"""
from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from experiments.common import content_rollout, kl_horizon, run_script, start, train_setting  # noqa: E402
from experiments.results import (ahead, curve, kl_share, markdown, plot_curves, results_dataset,  # noqa: E402
                                 span_means, stacked, write_results)

# name: (what it is, the options it changes on the preset)
SETTINGS = {
    "cwvae": ("CW-VAE: 3 levels, k 6", {"levels": 3, "factor": 6}),
    "rssm": ("RSSM: 1 level", {"levels": 1}),
    "notmpabs": ("NoTmpAbs: 3 levels, k 1 (no temporal abstraction)", {"levels": 3, "factor": 1}),
}
MEASURES = ("digit_accuracy", "ssim_best", "psnr_best")
REFERENCES = ("digit_accuracy_truth", "digit_accuracy_random_frame")


def main(argv=None) -> None:
    names, plan, accuracy = start(__doc__, SETTINGS, argv)
    evaluations = []
    for name in names:
        print(f"{name}: {SETTINGS[name][0]}", flush=True)
        run, cfg = train_setting(SETTINGS[name][1], plan)
        # the KL table sums over a training sequence: roll out at least that far
        evaluations.append(content_rollout(run, plan, accuracy, horizon=kl_horizon(plan, cfg)))
    results = collect(names, evaluations, plan)
    write_results(results, figure(results), plan, "baselines")
    print(summary(results))


def collect(names: list[str], evaluations: list[xr.Dataset], plan) -> xr.Dataset:
    """Accuracy, SSIM and PSNR against the horizon per setting, the classifier's ceiling and chance, the KL
    share above level 1 and the steps each trained."""
    # the rollouts may run past the horizon asked for, to cover the training sequence the KL table sums over
    predicted = [ahead(ds).isel(horizon=slice(0, plan.horizon_after(int(ds.attrs["context"])))) for ds in evaluations]
    variables = {name: stacked([curve(ds, name) for ds in predicted], names) for name in (*MEASURES, *REFERENCES)}
    shares = [kl_share(ds.kl_table.values) for ds in evaluations]
    variables["kl_share_above_1"] = ("setting", np.array(shares, dtype=np.float32), {
        "units": "1", "long_name": "share of the KL per training sequence (kl_table) at levels 2 and above"})
    variables["trained_steps"] = ("setting", [int(ds.attrs["checkpoint_step"]) for ds in evaluations],
                                  {"long_name": "training steps of the checkpoint evaluated (equal budget)"})
    return results_dataset(variables, names, SETTINGS, plan, "pyro-cwvae: digit-pair accuracy against the horizon, "
                           "CW-VAE against RSSM and NoTmpAbs (paper Figure 5b; experiments/baselines.py)")


def summary(results: xr.Dataset) -> str:
    """Each measure's mean over spans of the horizon per model, then the classifier on true and random frames."""
    spans = list(span_means(results.digit_accuracy.isel(setting=0)))
    header = ["model", "steps", *[f"{label} {span}" for label in ("digits", "SSIM", "PSNR") for span in spans],
              "KL above level 1"]
    rows = [[name, int(results.trained_steps.sel(setting=name)),
             *[value for measure in MEASURES for value in span_means(results[measure].sel(setting=name)).values()],
             f"{float(results.kl_share_above_1.sel(setting=name)):.1%}"] for name in results.setting.values]
    for reference, label in zip(REFERENCES, ("true frames", "random frames")):
        rows.append([label, "", *span_means(results[reference].mean("setting")).values(),
                     *[""] * (2 * len(spans) + 1)])
    return markdown(header, rows)


def figure(results: xr.Dataset) -> plt.Figure:
    """Figure 5b: digit-pair accuracy against the frames predicted, with the classifier's ceiling and chance."""
    fig, axis = plt.subplots(figsize=(7, 4))
    plot_curves(axis, results, "digit_accuracy", dict(zip(REFERENCES, ("true frames", "random frames"))))
    axis.set(ylim=(0, 1), title=f"Digit identity against the horizon ({results.attrs['scale']}, "
                                f"{results.attrs['budget']} steps each)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    run_script(main)
