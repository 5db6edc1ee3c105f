"""What every experiment does: train named settings (resumably), and read what they learned.

A setting is a dict of config options on top of a preset (``demo`` unless it names a ``dataset``). Its run lives
in ``OUT/runs/NAME``; calling ``train`` again with a larger budget resumes it, so an interrupted experiment
continues where it stopped and a CPU-sized result can be extended to a paper-sized one.

The paper's analyses (levels, speed, factor, baselines, content) add: the sizes they run at (``SCALES``: cpu,
paper, tiny), one run per distinct model (``run_name``), ``evaluate`` (a rollout on the test split with the
digit classifier's reading and the digits' positions of every frame, cached by checkpoint step), and helpers
for their results file, table and figure.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
import torch
import xarray as xr

from pyro_cwvae import classifier
from pyro_cwvae.atomic import atomic_path
from pyro_cwvae.checkpoint import CHECKPOINT, load_checkpoint
from pyro_cwvae.config import Config, option, preset
from pyro_cwvae.data import DatasetError
from pyro_cwvae.data.registry import open_dataset
from pyro_cwvae.errors import UserError
from pyro_cwvae.export import provenance, write_netcdf
from pyro_cwvae.history import HISTORY
from pyro_cwvae.predict import rollout
from pyro_cwvae.runs import CHANGEABLE_ON_RESUME, new_run_config, resume_config
from pyro_cwvae.train import fit

matplotlib.use("Agg")  # the figures go to files: no display needed
import matplotlib.pyplot as plt  # noqa: E402


def parser(description: str, budget: int) -> argparse.ArgumentParser:
    """The options every experiment takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--budget", type=int, default=budget, help=f"training steps per setting [{budget}]")
    parser.add_argument("--out", type=Path, default=Path("experiments/out"), help="folder of runs and results")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and batches: a smoke test of the script")
    return parser


TINY = dict(z_size=4, h_size=8, embed_size=8, enc_dense_size=16, enc_dense_layers=2, batch_size=1, workers=0)
"""Sizes of ``--tiny``: the same levels, frames and data, networks small enough to run a script in seconds."""


def train(name: str, options: dict, budget: int, out: Path, progress: bool = True, tiny: bool = False) -> Config:
    """Train setting ``name`` to ``budget`` steps in ``out/runs/name``, resuming a run that is already there."""
    run_dir = out / "runs" / name
    options = {**options, **TINY} if tiny else options
    if (run_dir / CHECKPOINT).exists():
        # the same options as when it started: a setting whose options changed is refused, not silently resumed
        cfg = resume_config({**options, "run_dir": str(run_dir), "steps": budget})
        resume = True
    else:
        cfg = new_run_config({**options, "steps": budget, "run_dir": str(run_dir)}, overwrite=True)
        resume = False
    data = open_dataset(cfg.dataset, cfg.data_dir, speed=cfg.speed, seed=cfg.seed)
    if not resume or _trained_steps(run_dir) < budget:
        if fit(cfg, data, resume=resume, progress=progress).interrupted:
            raise SystemExit(130)  # Ctrl-C or SIGTERM: the checkpoint is saved; stop here, not at the next setting
    return cfg


def _trained_steps(run_dir: Path) -> int:
    with xr.open_dataset(run_dir / HISTORY) as history:
        return int(history.step.max())


def history(out: Path, name: str) -> xr.Dataset:
    """The training history of setting ``name``."""
    with xr.open_dataset(out / "runs" / name / HISTORY) as ds:
        return ds.load()


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


# The paper's analyses (levels, speed, factor, baselines, content) share what follows: the sizes they run at,
# one training per distinct model, rollouts cached by checkpoint step, and their results as NetCDF and a figure.

EVAL_FRAMES = 1000
"""Frames of a test video in the paper's evaluation (the official eval_seq_len): context + horizon at paper scale."""

HORIZON_SPANS = ((1, 36), (37, 100), (101, 1000))
"""Spans of frames predicted ahead over which the tables average."""


@dataclass(frozen=True, eq=False)
class Scale:
    """One size of an experiment: the preset under every setting, the training steps and the rollouts."""

    name: str
    preset: str  # the config preset every setting changes (demo: CPU-sized; mmnist: the paper's)
    budget: int  # training steps per setting
    horizon: int | None  # frames predicted after the context (None: to the end of the paper's 1000-frame videos)
    sequences: int  # test sequences rolled out
    samples: int  # samples per test sequence


SCALES = {
    "cpu": Scale("cpu", "demo", budget=300, horizon=100, sequences=16, samples=3),
    "paper": Scale("paper", "mmnist", budget=Config().steps, horizon=None, sequences=100, samples=3),
    "tiny": Scale("tiny", "demo", budget=2, horizon=4, sequences=2, samples=1),
}


@dataclass(frozen=True)
class Plan:
    """What one invocation of an experiment runs: its scale with the user's overrides."""

    scale: Scale
    budget: int
    horizon: int | None
    sequences: int
    samples: int
    out: Path
    progress: bool

    @property
    def tiny(self) -> bool:
        return self.scale.name == "tiny"

    def horizon_after(self, context: int) -> int:
        """Frames to predict after ``context`` frames."""
        return EVAL_FRAMES - context if self.horizon is None else self.horizon


def experiment_parser(description: str, settings: dict) -> argparse.ArgumentParser:
    """``parser`` with the options of the paper's analyses: the scale, the rollouts and the settings to run."""
    options = parser(description, SCALES["cpu"].budget)
    options.set_defaults(budget=None)  # its default depends on the scale: make_plan fills it in
    options.add_argument("--paper", action="store_true",
                         help="the paper's sizes: mmnist preset (batch 50, 100-frame sequences, z 20, analytic KL), "
                              f"predictions to frame {EVAL_FRAMES}, {SCALES['paper'].sequences} test sequences, "
                              f"a budget of {SCALES['paper'].budget} steps")
    options.add_argument("--horizon", type=int, default=None,
                         help=f"frames predicted after the context [cpu {SCALES['cpu'].horizon}, "
                              f"paper to frame {EVAL_FRAMES}, tiny {SCALES['tiny'].horizon}]")
    options.add_argument("--sequences", type=int, default=None, help="test sequences rolled out [cpu 16, paper 100]")
    options.add_argument("--samples", type=int, default=None, help="samples per test sequence [3]")
    options.add_argument("--settings", default=",".join(settings),
                         help=f"comma-separated settings to run [all: {', '.join(settings)}]")
    return options


def run_script(main: Callable[[], None]) -> None:
    """Run an experiment's ``main`` as a command: bad input ends with one line on stderr and exit code 2, as in
    the ``pyro-cwvae`` command line."""
    try:
        main()
    except (UserError, DatasetError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan of parsed ``experiment_parser`` options; UserError for options that cannot work."""
    if args.paper and args.tiny:
        raise UserError("--paper and --tiny exclude each other")
    scale = SCALES["tiny" if args.tiny else "paper" if args.paper else "cpu"]
    plan = Plan(scale, budget=_given(args.budget, scale.budget), horizon=_given(args.horizon, scale.horizon),
                sequences=_given(args.sequences, scale.sequences), samples=_given(args.samples, scale.samples),
                out=args.out, progress=not args.quiet)
    for name in ("budget", "horizon", "sequences", "samples"):
        value = getattr(plan, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    return plan


def _given(value, default):
    return default if value is None else value


def chosen_settings(args: argparse.Namespace, settings: dict) -> list[str]:
    """The names in ``--settings``, in the order given; UserError for a name the experiment does not have."""
    names = [name for name in args.settings.split(",") if name]
    unknown = [name for name in names if name not in settings]
    if unknown or not names:
        raise UserError(f"unknown setting(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(settings)}")
    return names


def run_name(scale: Scale, options: dict) -> str:
    """The run folder of a setting: its scale, its preset and the model and data fields it changes there.

    Settings of different experiments that train the same model get the same name, so they share one run.
    """
    cfg = preset(scale.preset).replace(**options).validate()
    base = preset(scale.preset).to_dict()
    changed = [f"{option(key)}{_short(value)}" for key, value in sorted(cfg.to_dict().items())
               if key not in CHANGEABLE_ON_RESUME and value != base[key]]
    return f"{scale.name}/" + "_".join([scale.preset, *changed])


def _short(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def train_setting(options: dict, plan: Plan) -> tuple[str, Config]:
    """Train the model of ``options`` (on the plan's preset) to the plan's budget; its run name and config."""
    options = {"dataset": plan.scale.preset, **options} if plan.scale.preset != "demo" else options
    name = run_name(plan.scale, {key: value for key, value in options.items() if key != "dataset"})
    return name, train(name, options, plan.budget, plan.out, progress=plan.progress, tiny=plan.tiny)


PairReader = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Says whether uint8 frames (..., C, 64, 64) show the digit pair of labels (..., 2) broadcast to them: bool (...)."""

TINY_CLASSIFIER_STEPS = 3
"""Training steps of ``--tiny``'s digit classifier: a smoke test needs its outputs, not its accuracy."""


def start(doc: str, settings: dict, argv=None) -> tuple[list[str], Plan, PairReader]:
    """What every analysis script does first: parse its options (its description is the first line of ``doc``),
    choose its settings, size the plan, set the threads and load the digit reader."""
    args = experiment_parser(doc.splitlines()[0], settings).parse_args(argv)
    names = chosen_settings(args, settings)
    plan = make_plan(args)
    set_threads(args.threads)
    return names, plan, digit_reader(plan)


def digit_reader(plan: Plan) -> PairReader:
    """The digit classifier (``pyro_cwvae.classifier``, trained and cached at first use: minutes on a CPU), or under
    ``--tiny`` one trained for a few steps and not cached."""
    if plan.tiny:
        net, _ = classifier.train(steps=TINY_CLASSIFIER_STEPS, batch_size=4)
    else:
        net = classifier.digit_classifier("cuda" if torch.cuda.is_available() else "cpu")
    return lambda frames, labels: classifier.digit_pair_accuracy(frames, labels, net)


def evaluate(name: str, plan: Plan, reads_pair: PairReader, *, context: int | None = None, horizon: int | None = None,
             prior_levels: int = 0, seed: int = 0) -> xr.Dataset:
    """Roll run ``name`` out on the test split (``pyro_cwvae.predict.rollout``) and measure what the frames keep.

    Adds to the rollout, for each (sample, sequence, time): ``digit_accuracy`` (the classifier reads the true
    pair of digits) and ``position_error`` (pixels between the centres of the ink of prediction and truth), and
    both for the truth and the copy-last-frame and random-frame baselines. The frames themselves are kept for the
    first sequence only (``example_prediction``, ``example_truth``). Cached in ``out/rollouts`` by the
    checkpoint step: a rerun rolls out again only a run that has trained further.
    """
    run_dir = plan.out / "runs" / name
    state = load_checkpoint(run_dir)
    cfg = Config.from_dict(state["config"])
    context = cfg.context if context is None else context
    horizon = plan.horizon_after(context) if horizon is None else horizon
    cache = (plan.out / "rollouts" / name /
             f"context{context}_horizon{horizon}_prior{prior_levels}_sequences{plan.sequences}"
             f"_samples{plan.samples}_seed{seed}.nc")
    if cache.exists():
        with xr.open_dataset(cache) as cached:
            if cached.attrs["checkpoint_step"] == state["step"]:
                return cached.load()
    data = open_dataset(cfg.dataset, cfg.data_dir, speed=cfg.speed, seed=cfg.seed)
    ds = rollout(run_dir, data, horizon=horizon, context=context, samples=plan.samples, sequences=plan.sequences,
                 seed=seed, prior_levels=prior_levels, progress=plan.progress)
    ds = with_content_measures(ds, data, reads_pair, seed)
    write_netcdf(ds, cache, encoding={name: {"zlib": True} for name in ("example_prediction", "example_truth")})
    return ds


def with_content_measures(ds: xr.Dataset, data, reads_pair: PairReader, seed: int) -> xr.Dataset:
    """``evaluate``'s measures of digit identity and position added to rollout ``ds``; its images (frames and
    their spread over samples) dropped but for the frames of the first sequence."""
    N, T, context = ds.sizes["sequence"], ds.sizes["time"], ds.attrs["context"]
    prediction, truth = ds.prediction.values, ds.truth.values
    labels = np.stack([data.test_labels(n) for n in range(N)])  # (N, 2)
    # The frames the rollout's random-frame baseline drew: the same call gives the same frames.
    random_frame = data.train_batch(step=-1, batch_size=N, seq_len=1, seed=seed)
    centre = ink_centre(truth)
    for suffix, frames in {"": prediction, "_truth": truth, "_last_frame": truth[:, context - 1:context],
                           "_random_frame": random_frame}.items():
        measured = MEASURED_FRAMES[suffix]
        accuracy = np.broadcast_to(reads_pair(frames, labels[:, None]), (*frames.shape[:-5], N, T))
        _add_measure(ds, "digit_accuracy" + suffix, accuracy, measured)
        if suffix != "_truth":
            error = np.broadcast_to(np.linalg.norm(ink_centre(frames) - centre, axis=-1), accuracy.shape)
            _add_measure(ds, "position_error" + suffix, error, measured)
    frame = ("time", "channel", "y", "x")
    examples = {"example_prediction": (("sample", *frame), prediction[:, 0], ds.prediction.attrs),
                "example_truth": (frame, truth[0], ds.truth.attrs)}
    ds = ds.drop_vars([name for name, values in ds.data_vars.items() if "y" in values.dims])  # images: too large
    ds.attrs["digit_labels"] = labels.ravel().astype(np.int32)
    return ds.assign(examples)


def _add_measure(ds: xr.Dataset, name: str, values: np.ndarray, frames: str) -> None:
    """Add a measure (sample?, sequence, time) to ``ds``, NaN where the test video has no frame to compare."""
    values = np.where(ds.has_truth.values, values, np.nan).astype(np.float32)
    dims = ("sample", "sequence", "time")[3 - values.ndim:]
    ds[name] = (dims, values, {**MEASURES[name.split("_")[0]], "frames": frames})


MEASURES = {
    "digit": {"units": "1", "long_name": "the digit classifier reads the true pair of digits (1) or not (0)"},
    "position": {"units": "pixels", "long_name": "distance between the centres of the ink of frame and truth"},
}
MEASURED_FRAMES = {"": "the decoded frames", "_truth": "the true frames",
                   "_last_frame": "the last context frame, repeated",
                   "_random_frame": "a random training frame (the rollout's random-frame baseline)"}


def ink_centre(frames: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Centre (y, x) in pixels of the ink of uint8 frames (..., C, H, W): where the digits are. NaN on a blank frame.

    Works through ``chunk`` frames at a time: a paper-sized rollout's frames as floats would not fit in memory.
    """
    lead, (H, W) = frames.shape[:-3], frames.shape[-2:]
    flat = frames.reshape(-1, *frames.shape[-3:])
    centres = np.empty((len(flat), 2))
    for start in range(0, len(flat), chunk):
        ink = flat[start:start + chunk].sum(axis=-3, dtype=np.float64)  # (n, H, W)
        with np.errstate(invalid="ignore", divide="ignore"):
            centres[start:start + chunk] = np.stack([ink.sum(-1) @ np.arange(H), ink.sum(-2) @ np.arange(W)],
                                                    axis=-1) / ink.sum(axis=(-2, -1))[:, None]
    return centres.reshape(*lead, 2)


def ahead(ds: xr.Dataset) -> xr.Dataset:
    """The predicted frames of an evaluation on a ``horizon`` axis: frames predicted ahead (1 is the first)."""
    context = int(ds.attrs["context"])
    predicted = ds.drop_dims(["level"], errors="ignore").isel(time=slice(context, None))
    horizon = xr.DataArray(predicted.time.values - context + 1, dims="time",
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
        budget_units="training steps per setting", sequences=plan.sequences, samples=plan.samples,
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


def kl_horizon(plan: Plan, cfg: Config) -> int:
    """Frames to predict after the context so that the KL table (``kl_table``) sums at least one training sequence."""
    return max(plan.horizon_after(cfg.context), cfg.seq_len - cfg.context)


def kl_share(kl_table: np.ndarray) -> float:
    """The share of the KL at levels 2 and above, of a KL table (level 1 first; NaN at levels a model lacks)."""
    kl = kl_table[np.isfinite(kl_table)]
    return float(kl[1:].sum() / kl.sum()) if kl.sum() > 0 else float("nan")
