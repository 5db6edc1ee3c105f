"""Which level holds the digits? A linear probe on each level's posterior, against the same probe on the untrained
networks.

    python -m experiments.probe RUN [RUN ...]            # 2000 videos fit each probe, 500 others score it
    python -m experiments.probe RUN --fit 2000 --score 1000 --out OUT

A rollout can lose the digits because no level holds them, or because the priors cannot carry forward what a level
holds. This tells the two apart without the priors: the context (36 frames) of generated Moving MNIST videos is
filtered by the run's guide, and for each level a linear read-out of the posterior mean of its last step inside the
context (level 3: frames 1-36, level 2: frames 31-36, level 1: frame 36) is fitted to the video's pair of digit
classes (the digit classifier's head: for each class, how many of the two digits have it) on videos of training
digits, then scored on videos of test digits: how often it reads the right unordered pair, and the share of the two
digits it reads (a pair half right scores 0.5: the finer measure when pairs are rarely read whole). Chance is what
always answering the pair most common among the fitting videos scores (about 0.02 and 0.2).
The same probe on the run's networks at their initial weights (its seed's) is the control: a random encoder's
features already tell digits apart somewhat. A level holds the digits' identities as far as its trained accuracy
rises above its control.

Writes OUT/probe.nc (both measures by run, network and level) and OUT/probe.png, and prints a markdown table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from pyro import poutine  # noqa: E402

from experiments.common import description, run_script  # noqa: E402
from experiments.results import markdown  # noqa: E402
from pyro_cwvae.data.moving_mnist import labelled_video, split_digits, split_labels  # noqa: E402
from pyro_cwvae.errors import UserError  # noqa: E402
from pyro_cwvae.evaluation.digits import count_targets, decode_pairs, loss, same_pairs  # noqa: E402
from pyro_cwvae.files.atomic import atomic_path  # noqa: E402
from pyro_cwvae.files.netcdf import write_netcdf  # noqa: E402
from pyro_cwvae.model.config import Config  # noqa: E402
from pyro_cwvae.model.programs import load_programs  # noqa: E402
from pyro_cwvae.prediction import load_run  # noqa: E402

NETWORKS = ("trained", "initial")
MEASURES = {"pair_accuracy": "the right unordered pair of digits", "digit_accuracy": "share of the two digits read"}


def labelled_videos(split: str, count: int, frames: int, speed: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` Moving MNIST videos (count, frames, 1, 64, 64) uint8 of ``split``'s digits, and their classes."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    pool, classes = split_digits(split), split_labels(split)
    videos = [labelled_video(rng, pool, classes, frames, speed) for _ in range(count)]
    return np.stack([v for v, _ in videos]), np.stack([c for _, c in videos])


@torch.no_grad()
def posterior_means(nets: torch.nn.Module, guide, cfg: Config, videos: np.ndarray, chunk: int = 50,
                    seed: int = 0) -> list[np.ndarray]:
    """For each level, the posterior mean of its last step inside the videos' frames: (N, z) per level. A step's
    posterior depends on the draws of the steps before it, so they are seeded with ``seed``."""
    pyro.clear_param_store()  # the guide registers ``nets`` under a fixed name: no other networks' weights there
    pyro.set_rng_seed(seed)
    per_level = [[] for _ in range(cfg.levels)]
    for start in range(0, len(videos), chunk):
        video = torch.as_tensor(videos[start:start + chunk]).float().div_(255)
        trace = poutine.trace(guide).get_trace(video, nets, cfg)
        for level in range(1, cfg.levels + 1):
            last = cfg.clock.active_frames(level, video.shape[1])[-1]
            per_level[level - 1].append(trace.nodes[cfg.clock.site_name(level, last)]["fn"].mean.numpy())
    return [np.concatenate(means) for means in per_level]


def fit_probe(features: np.ndarray, classes: np.ndarray, weight_decay: float = 1e-3,
              iterations: int = 200) -> callable:
    """A linear map from standardised ``features`` to the classifier's count scores (10 classes x 0, 1 or 2),
    fitted by L-BFGS on its cross-entropy plus ``weight_decay`` times the squared weights; returns the read-out
    (features -> pairs)."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = torch.as_tensor((features - mean) / std, dtype=torch.float32)
    y = torch.as_tensor(classes)
    linear = torch.nn.Linear(x.shape[1], 10 * 3)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        value = loss(linear(x).view(-1, 10, 3), y) + weight_decay * linear.weight.square().sum()
        value.backward()
        return value

    optimizer.step(objective)

    def read(new: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return decode_pairs(linear(torch.as_tensor((new - mean) / std, dtype=torch.float32)).view(-1, 10, 3))

    return read


def initial_nets(cfg: Config) -> torch.nn.Module:
    """The networks the run started from: built by its programs after seeding with its seed, as training builds
    them."""
    pyro.set_rng_seed(cfg.seed)
    return load_programs(cfg.model, cfg.guide).make_nets(cfg).eval()


def scores(read: torch.Tensor, classes: np.ndarray) -> np.ndarray:
    """Both measures of read pairs ``(N, 2)`` against the true ``classes``, averaged over videos: ``(2,)``."""
    truth = torch.as_tensor(classes)
    shared = torch.minimum(count_targets(read), count_targets(truth)).sum(-1) / 2  # 0, 0.5 or 1 of the digits
    return np.array([same_pairs(read, truth).float().mean(), shared.float().mean()])


def most_common_pair(classes: np.ndarray) -> np.ndarray:
    pairs, counts = np.unique(np.sort(classes, axis=1), axis=0, return_counts=True)
    return pairs[counts.argmax()]


def probe_run(path: Path, fit: int, score: int, context: int, seed: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The run's step, the measures (network, level, measure) of its probes, and chance (measure,) on the same
    videos."""
    run = load_run(path, device="cpu")
    cfg = run.cfg
    if cfg.dataset != "mmnist" or cfg.data_dir:
        raise UserError(f"{path} was not trained on generated Moving MNIST: its digits are not known")
    fit_videos, fit_classes = labelled_videos("train", fit, context, cfg.speed, seed)
    score_videos, score_classes = labelled_videos("test", score, context, cfg.speed, seed)
    accuracy = np.zeros((len(NETWORKS), cfg.levels, len(MEASURES)))
    for n, nets in enumerate((run.nets, initial_nets(cfg))):
        fitted = posterior_means(nets, run.guide, cfg, fit_videos)
        scored = posterior_means(nets, run.guide, cfg, score_videos)
        for level in range(cfg.levels):
            read = fit_probe(fitted[level], fit_classes)
            accuracy[n, level] = scores(read(scored[level]), score_classes)
    return run.step, accuracy, scores(torch.as_tensor(most_common_pair(fit_classes)).expand(score, 2), score_classes)


def main(argv=None) -> None:
    args = argparse.ArgumentParser(description=description(__doc__))
    args.add_argument("runs", nargs="+", type=Path, help="run directories (trained on generated Moving MNIST)")
    args.add_argument("--fit", type=int, default=2000, help="videos of training digits that fit each probe [2000]")
    args.add_argument("--score", type=int, default=500, help="videos of test digits that score it [500]")
    args.add_argument("--context", type=int, default=36, help="frames filtered [36]")
    args.add_argument("--seed", type=int, default=0, help="seed of the videos [0]")
    args.add_argument("--out", type=Path, default=Path("experiments/out"), help="output folder [experiments/out]")
    args = args.parse_args(argv)
    if min(args.fit, args.score, args.context) < 1:
        raise UserError("--fit, --score and --context must be at least 1")
    results = [probe_run(path, args.fit, args.score, args.context, args.seed) for path in args.runs]
    levels = max(accuracy.shape[1] for _, accuracy, _ in results)
    table = np.full((len(results), len(NETWORKS), levels, len(MEASURES)), np.nan)  # NaN: a run with fewer levels
    for i, (_, accuracy, _) in enumerate(results):
        table[i, :, :accuracy.shape[1]] = accuracy
    names = [f"{path.name} (step {step})" for path, (step, _, _) in zip(args.runs, results)]
    chance = results[0][2]  # the same videos for every run
    ds = xr.Dataset(
        {name: (("run", "network", "level"), table[..., m],
                {"long_name": f"{about}, by a linear probe on the level's posterior mean", "chance": chance[m]})
         for m, (name, about) in enumerate(MEASURES.items())},
        coords={"run": names, "network": list(NETWORKS), "level": np.arange(1, levels + 1)},
        attrs={"title": "pyro-cwvae: which level holds the digits (experiments/probe.py)", "fit_videos": args.fit,
               "score_videos": args.score, "context": args.context})
    args.out.mkdir(parents=True, exist_ok=True)
    write_netcdf(ds, args.out / "probe.nc")
    write_figure(ds, args.out / "probe.png")
    rows = [[name, network, *(f"{pair:.3f} / {digit:.3f}" for pair, digit in
                              zip(ds.pair_accuracy.sel(run=name, network=network).values,
                                  ds.digit_accuracy.sel(run=name, network=network).values))]
            for name in names for network in NETWORKS]
    print(markdown(["run", "networks", *(f"level {level}: pair / digits" for level in ds.level.values)], rows))
    print(f"(chance {chance[0]:.3f} / {chance[1]:.3f}; {args.fit} videos fit each probe, {args.score} score it)")


def write_figure(ds: xr.Dataset, path: Path) -> None:
    """One panel per measure: a bar per run and level, the initial weights' as hatched outlines, chance dotted."""
    figure, axes = plt.subplots(len(MEASURES), 1, figsize=(2.5 + 1.4 * ds.sizes["run"], 3.4 * len(MEASURES)))
    width = 0.8 / ds.sizes["level"]
    for axis, (name, about) in zip(axes, MEASURES.items()):
        for l, level in enumerate(ds.level.values):
            x = np.arange(ds.sizes["run"]) + (l - (ds.sizes["level"] - 1) / 2) * width
            axis.bar(x, ds[name].sel(level=level, network="trained"), width, label=f"level {level}")
            axis.bar(x, ds[name].sel(level=level, network="initial"), width, fill=False, hatch="//",
                     label="initial weights" if l == 0 else None)
        axis.axhline(ds[name].attrs["chance"], color="0.4", linestyle=":", label="chance")
        axis.set(xticks=np.arange(ds.sizes["run"]), ylabel=about, title=f"probe on each level: {about}")
        axis.set_xticklabels(ds.run.values, fontsize="small")
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    run_script(main)
