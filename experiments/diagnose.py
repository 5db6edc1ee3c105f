"""Why do the slow levels stay empty? Train the demo under each candidate setting and compare the per-level KL.

    python -m experiments.diagnose                       # every setting, the demo's 1000 steps each (CPU: hours)
    python -m experiments.diagnose --settings demo,beta-top --budget 3000

Each setting changes one thing of the demo preset (generated Moving MNIST, 3 levels, k 6, z 64, 72 frames, batch
2, dec_std 0.1). Writes OUT/diagnose.nc (the per-level KL, loss and reconstruction of every setting against the
training step) and OUT/diagnose.png (the KL of each level against the step, one line per setting), and prints the
KL per frame of each level over the last tenth of training with the share above level 1. Rerun with a larger
--budget to continue every run from its checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from experiments.common import (chosen_settings, description, history, parser, run_script, set_threads,  # noqa: E402
                                train)
from pyro_cwvae.files.atomic import atomic_path  # noqa: E402
from pyro_cwvae.files.netcdf import write_netcdf  # noqa: E402
from pyro_cwvae.plots.history import smoothed  # noqa: E402

# name: (what it tests, the options it changes on the demo preset)
SETTINGS = {
    "demo": ("the demo as it is (Trace_ELBO, dec_std 0.1, lr 3e-4)", {}),
    "seq-36": ("the former demo: 4 x 36 frames, one top step a sequence, so the top transition never trains",
               {"seq_len": 36, "batch_size": 4}),
    "meanfield": ("analytic KLs (the official loss)", {"elbo": "meanfield"}),
    "dec-std-1": ("the paper's Moving MNIST likelihood std: detail costs less to leave out", {"dec_std": 1.0}),
    "z-20": ("the reference z size instead of the demo's 64", {"z_size": 20}),
    "lr-1e-3": ("the former demo's learning rate, 1e-3 instead of the reference 3e-4", {"lr": 1e-3}),
    "balance": ("KL balancing: the prior takes 0.8 of the KL gradient", {"elbo": "meanfield", "kl_balance": 0.2}),
    "free-nats": ("3 free nats per sequence and level", {"elbo": "meanfield", "free_nats": 3.0}),
    "beta-top": ("information above level 1 costs a tenth", {"elbo": "meanfield", "kl_beta": [1.0, 0.1, 0.1]}),
    "obs-dropout": ("level 1's posterior sees each training frame with probability 0.5", {"obs_dropout": 0.5}),
}


def main(argv=None) -> None:
    args = parser(description(__doc__), budget=1000)
    args.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of settings to run")
    args = args.parse_args(argv)
    names = chosen_settings(args, SETTINGS)
    set_threads(args.threads)
    for name in names:
        print(f"{name}: {SETTINGS[name][0]}", flush=True)
        train(name, SETTINGS[name][1], args.budget, args.out, progress=not args.quiet, tiny=args.tiny)
    results = collect(args.out, names)
    write(results, args.out)
    print(summary(results))


def collect(out: Path, names: list[str]) -> xr.Dataset:
    """The histories of ``names`` side by side, on the steps they share."""
    runs = [history(out, name)[["loss", "reconstruction", "kl"]] for name in names]
    results = xr.concat(runs, dim="setting", join="inner").assign_coords(setting=names)
    results.attrs.update(title="pyro-cwvae: per-level KL under candidate settings (experiments/diagnose.py)",
                         settings="; ".join(f"{n}: {SETTINGS[n][0]} {SETTINGS[n][1]}" for n in names))
    return results


def summary(results: xr.Dataset) -> str:
    """KL per frame of each level over the last tenth of training, and the share of the KL above level 1."""
    tail = results.sel(step=results.step[-max(1, results.sizes["step"] // 10):]).mean("step")
    lines = ["| setting | " + " | ".join(f"KL level {int(l)}" for l in results.level) + " | share above 1 | loss |",
             "|---" * (results.sizes["level"] + 3) + "|"]
    for name in results.setting.values:
        kl = tail.kl.sel(setting=name).values
        lines.append(f"| {name} | " + " | ".join(f"{v:.3g}" for v in kl)
                     + f" | {kl[1:].sum() / kl.sum():.1%} | {float(tail.loss.sel(setting=name)):.1f} |")
    return "\n".join(lines)


def write(results: xr.Dataset, out: Path) -> None:
    write_netcdf(results, out / "diagnose.nc")
    figure, axes = plt.subplots(1, results.sizes["level"], figsize=(4.5 * results.sizes["level"], 3.6))
    for axis, level in zip(np.atleast_1d(axes), results.level.values):
        for name in results.setting.values:
            kl = results.kl.sel(setting=name, level=level).values
            axis.plot(results.step, smoothed(kl, 50), label=name)
        axis.set(title=f"level {level}", xlabel="training step", ylabel="KL (nats per frame, mean of 50 steps)",
                 yscale="log")
    np.atleast_1d(axes)[0].legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(out / "diagnose.png") as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    run_script(main)
