"""Table 1 of the paper: the KL of each level of CW-VAEs with 1, 2, 3 levels (k 6) and 4 levels (k 4).

    python -m experiments.levels                    # CPU size: the demo preset, 300 steps per model
    python -m experiments.levels --paper            # the paper's: mmnist preset, 100-frame sequences
    python -m experiments.levels --settings 1-level,3-level --budget 1000

Each model trains on generated Moving MNIST (resumably: rerun with a larger --budget to continue), then the
guide filters the test videos and the KL of each level is summed over each window of a training sequence's
frames and averaged: the rollout file's ``kl_table``, Table 1's quantity. At CPU size the sequences have 128
frames (batch 2) instead of the demo's 72, so that every model, the 4-level one with k 4 too, sees two steps of
its top level per training sequence (with one, its transition never trains) and every table sums over the same
frames. Writes OUT/levels-SCALE.nc (``kl_table``
per setting and level, ours and the paper's) and OUT/levels-SCALE.png, and prints the table.
"""
from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from experiments.common import content_rollout, history, kl_horizon, run_script, start, train_setting  # noqa: E402
from experiments.results import kl_share, markdown, results_dataset, stacked, write_results  # noqa: E402

# name: (what it is, the options it changes on the preset)
SETTINGS = {
    "1-level": ("one level: an RSSM", {"levels": 1}),
    "2-level": ("two levels, k 6", {"levels": 2, "factor": 6}),
    "3-level": ("three levels, k 6 (the paper's default)", {"levels": 3, "factor": 6}),
    "4-level": ("four levels, k 4 (k 6 did not fit the paper's GPU)", {"levels": 4, "factor": 4}),
}
# At CPU size: two steps of the 4-level model's top level (4**3 frames) in every training sequence, so that its
# transition trains (with one, it gets no gradient: Config.warnings), at the demo's frames per batch (2 x 128).
DEMO_SIZE = {"seq_len": 128, "batch_size": 2}
PAPER_TABLE = {  # Table 1 of the paper, nats per training sequence of 100 frames, level 1 first
    "1-level": [440.50], "2-level": [389.40, 39.18], "3-level": [366.70, 45.28, 6.29],
    "4-level": [397.10, 41.20, 2.66, 0.0001],
}


def main(argv=None) -> None:
    names, plan, accuracy = start(__doc__, SETTINGS, argv)
    tables, losses, steps = [], [], []
    for name in names:
        print(f"{name}: {SETTINGS[name][0]}", flush=True)
        options = {**SETTINGS[name][1], **(DEMO_SIZE if plan.scale.preset == "demo" else {})}
        run, cfg = train_setting(options, plan)
        evaluation = content_rollout(run, plan, accuracy, horizon=kl_horizon(plan, cfg))  # KL of the true frames
        tables.append(evaluation.kl_table)
        trained = history(plan.out, run)
        losses.append(trained.loss.isel(step=slice(-max(1, trained.sizes["step"] // 10), None)).mean())
        steps.append(int(evaluation.attrs["checkpoint_step"]))
    results = collect(names, tables, losses, steps, plan)
    write_results(results, figure(results), plan, "levels")
    print(summary(results))


def collect(names, tables, losses, steps, plan) -> xr.Dataset:
    """The KL table of each setting beside the paper's, the final training loss and the steps trained."""
    kl_table = stacked(tables, names)
    paper = np.full(kl_table.shape, np.nan, dtype=np.float32)
    for row, name in enumerate(names):
        paper[row, :len(PAPER_TABLE[name])] = PAPER_TABLE[name]
    variables = {
        "kl_table": kl_table,
        "kl_table_paper": (("setting", "level"), paper, {
            "units": "nats", "long_name": "Table 1 of the paper (100-frame training sequences, mmnist preset)"}),
        "loss": ("setting", np.array(losses, dtype=np.float32), {
            "units": "nats per frame", "long_name": "negative ELBO on training batches, mean of the last tenth"}),
        "trained_steps": ("setting", np.array(steps), {"long_name": "training steps of the checkpoint evaluated"}),
    }
    return results_dataset(variables, names, SETTINGS, plan, "pyro-cwvae: KL per level against the number of levels "
                           "(paper Table 1; experiments/levels.py)")


def summary(results: xr.Dataset) -> str:
    """Our KL per level and share above level 1, beside the paper's."""
    levels = results.level.values
    header = ["model", *[f"KL level {level}" for level in levels], "share above 1", "paper", "paper share above 1"]
    rows = []
    for name in results.setting.values:
        ours, paper = (results[v].sel(setting=name).values for v in ("kl_table", "kl_table_paper"))
        rows.append([name, *[_value(v) for v in ours], _share(ours), " / ".join(f"{v:.3g}" for v in paper
                                                                                if np.isfinite(v)), _share(paper)])
    return markdown(header, rows)


def _value(value: float):
    return "-" if np.isnan(value) else float(value)


def _share(kl: np.ndarray) -> str:
    return f"{kl_share(kl):.1%}" if np.isfinite(kl).sum() > 1 else "-"


def figure(results: xr.Dataset) -> plt.Figure:
    """Table 1 as bars: the KL of each level of each model, ours as bars, the paper's as black ticks on them (on a
    log axis an outline bar would start at the axis' floor and hide behind ours)."""
    fig, axis = plt.subplots(figsize=(2 + 1.6 * results.sizes["setting"], 3.8))
    width = 0.8 / results.sizes["level"]
    for index, level in enumerate(results.level.values):
        where = np.arange(results.sizes["setting"]) + (index - (results.sizes["level"] - 1) / 2) * width
        axis.bar(where, results.kl_table.sel(level=level), width, label=f"level {level}", color=f"C{index}")
        axis.scatter(where, results.kl_table_paper.sel(level=level), marker="_", s=600 * width, color="black",
                     linewidths=2, label="paper" if index == 0 else None, zorder=3)
    axis.set(xticks=np.arange(results.sizes["setting"]), xticklabels=results.setting.values, yscale="log",
             ylabel="KL per training sequence (nats)",
             title=f"KL per level ({results.attrs['scale']}, {results.attrs['budget']} steps; black: the paper's)")
    axis.legend(fontsize="small")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    run_script(main)
