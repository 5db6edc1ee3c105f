"""Figure 8 of the paper: the KL of each level of a 3-level CW-VAE on slower, normal and faster Moving MNIST.

    python -m experiments.speed                     # CPU size: the demo preset, 300 steps per speed
    python -m experiments.speed --paper             # the paper's: mmnist preset
    python -m experiments.speed --settings slower,faster --budget 1000

Generated Moving MNIST with the digits' speed (2-6 pixels a frame) times 0.5, 1 and 2 (Config ``speed``); the
test videos move at the training speed. Each model trains resumably, then the guide filters the test videos
and the KL of each level is summed over each window of a training sequence's frames and averaged (the rollout
file's ``kl_table``). The paper finds that faster digits put more KL at level 1 and less at levels 2 and 3.
Writes OUT/speed-SCALE.nc (``kl_table`` per setting and level, ``speed`` per setting) and OUT/speed-SCALE.png,
and prints the table.
"""
from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from experiments.common import content_rollout, kl_horizon, run_script, start, train_setting  # noqa: E402
from experiments.results import kl_share, markdown, results_dataset, stacked, write_results  # noqa: E402

# name: (what it is, the options it changes on the preset)
SETTINGS = {
    "slower": ("digits at half the speed", {"speed": 0.5}),
    "normal": ("digits at the usual 2-6 pixels a frame", {"speed": 1.0}),
    "faster": ("digits at twice the speed", {"speed": 2.0}),
}


def main(argv=None) -> None:
    names, plan, accuracy = start(__doc__, SETTINGS, argv)
    tables, steps = [], []
    for name in names:
        print(f"{name}: {SETTINGS[name][0]}", flush=True)
        run, cfg = train_setting(SETTINGS[name][1], plan)
        evaluation = content_rollout(run, plan, accuracy, horizon=kl_horizon(plan, cfg))  # KL of the true frames
        tables.append(evaluation.kl_table)
        steps.append(int(evaluation.attrs["checkpoint_step"]))
    results = collect(names, tables, steps, plan)
    write_results(results, figure(results), plan, "speed")
    print(summary(results))


def collect(names, tables, steps, plan) -> xr.Dataset:
    speeds = [SETTINGS[name][1]["speed"] for name in names]
    variables = {
        "kl_table": stacked(tables, names),
        "trained_steps": ("setting", np.array(steps), {"long_name": "training steps of the checkpoint evaluated"}),
    }
    speed = ("setting", speeds, {"units": "1", "long_name": "digit speed as a multiple of 2-6 pixels a frame"})
    return results_dataset(variables, names, SETTINGS, plan, "pyro-cwvae: KL per level against the digits' speed "
                           "(paper Figure 8; experiments/speed.py)", speed=speed)


def summary(results: xr.Dataset) -> str:
    """The KL of each level at each speed and the share above level 1."""
    header = ["speed", *[f"KL level {level}" for level in results.level.values], "share above 1"]
    rows = []
    for name in results.setting.values:
        kl = results.kl_table.sel(setting=name).values
        rows.append([f"{name} ({float(results.speed.sel(setting=name)):g}x)", *map(float, kl), f"{kl_share(kl):.1%}"])
    return markdown(header, rows)


def figure(results: xr.Dataset) -> plt.Figure:
    """Figure 8: one panel per level, its KL against the digits' speed."""
    levels = results.level.values
    fig, axes = plt.subplots(1, len(levels), figsize=(3.4 * len(levels), 3.2))
    order = np.argsort(results.speed.values)
    for axis, level in zip(np.atleast_1d(axes), levels):
        kl = results.kl_table.sel(level=level).values[order]
        axis.plot(results.speed.values[order], kl, marker="o", color=f"C{level - 1}")
        axis.set(title=f"level {level}", xlabel="digit speed (x normal)", xscale="log")
        axis.minorticks_off()  # the log axis's own labels would overwrite the speeds'
        axis.set(xticks=results.speed.values[order], xticklabels=[f"{s:g}" for s in results.speed.values[order]])
    np.atleast_1d(axes)[0].set_ylabel("KL per training sequence (nats)")
    fig.suptitle(f"KL per level against speed ({results.attrs['scale']}, {results.attrs['budget']} steps)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    run_script(main)
