"""What every experiment does: train named settings (resumably), and read what they learned.

A setting is a dict of config options on top of a preset (``demo`` unless it names a ``dataset``). Its run lives
in ``OUT/runs/NAME``; calling ``train`` again with a larger budget resumes it, so an interrupted experiment
continues where it stopped and a CPU-sized result can be extended to a paper-sized one. Training goes through
``run_config`` and ``fit``, as ``pyro-cwvae fit`` does; rollouts through the package's ``rollout``.

The paper's analyses (levels, speed, factor, baselines, content) add: the sizes they run at (``SCALES``: cpu,
paper, tiny), one run per distinct model (``run_name``), ``content_rollout`` (a rollout on the test split with
the digit classifier's reading and the digits' positions of every frame, cached by checkpoint step); their
results file, table and figure are made with ``experiments.results``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xarray as xr

from pyro_cwvae.data import DatasetError
from pyro_cwvae.data.registry import open_run_data
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation import digits
from pyro_cwvae.evaluation.accuracy import DigitAccuracy
from pyro_cwvae.files.netcdf import write_netcdf
from pyro_cwvae.model.config import Config, option, preset
from pyro_cwvae.prediction import Intervention, PredictionOptions, load_run
from pyro_cwvae.prediction.rollout import rollout
from pyro_cwvae.training.checkpoint import CHECKPOINT
from pyro_cwvae.training.history import HISTORY
from pyro_cwvae.training.loop import fit
from pyro_cwvae.training.run_config import CHANGEABLE_ON_RESUME, run_config


def description(doc: str) -> str:
    """A script's --help description: the first paragraph of its docstring ``doc``, on one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


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
    resume = (run_dir / CHECKPOINT).exists()
    # resumed with the options it started with (a setting whose options changed is refused, not silently resumed),
    # then trained on to the budget; a run already past it is used as it is
    steps = {} if resume else {"steps": budget}
    cfg = run_config({**options, **steps, "run_dir": str(run_dir)}, resume=resume, overwrite=not resume)
    if not resume or _trained_steps(run_dir) < budget:
        cfg = cfg.replace(steps=budget)
        if fit(cfg, open_run_data(cfg), resume=resume, progress=progress).interrupted:
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


def run_script(main: Callable[[], None]) -> None:
    """Run an experiment's ``main`` as a command: bad input ends with one line on stderr and exit code 2, as in
    the ``pyro-cwvae`` command line."""
    try:
        main()
    except (UserError, DatasetError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def chosen_settings(args: argparse.Namespace, settings: dict) -> list[str]:
    """The names in ``--settings``, in the order given; UserError for a name the experiment does not have."""
    names = [name for name in args.settings.split(",") if name]
    unknown = [name for name in names if name not in settings]
    if unknown or not names:
        raise UserError(f"unknown setting(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(settings)}")
    return names


# The paper's analyses (levels, speed, factor, baselines, content) share what follows: the sizes they run at,
# one training per distinct model, and rollouts with content measures cached by checkpoint step.

TEST_FRAMES = 1000
"""Frames of a generated Moving MNIST test video (the official eval_seq_len): horizon None predicts to its end."""


@dataclass(frozen=True, eq=False)
class Scale:
    """One size of an experiment: the preset under every setting, the training steps and the rollouts."""

    name: str
    preset: str  # the config preset every setting changes (demo: CPU-sized; mmnist: the paper's)
    budget: int  # training steps per setting
    prediction: PredictionOptions  # horizon None: to the end of the test videos, frame 1000


SCALES = {
    "cpu": Scale("cpu", "demo", budget=300, prediction=PredictionOptions(horizon=100, sequences=16, samples=3)),
    "paper": Scale("paper", "mmnist", budget=Config().steps, prediction=PredictionOptions(sequences=100, samples=3)),
    "tiny": Scale("tiny", "demo", budget=2, prediction=PredictionOptions(horizon=4, sequences=2, samples=1)),
}


@dataclass(frozen=True)
class Plan:
    """What one invocation of an experiment runs: its scale with the user's overrides."""

    scale: Scale
    budget: int
    prediction: PredictionOptions  # the scale's, with --horizon, --sequences and --samples
    out: Path
    progress: bool

    @property
    def tiny(self) -> bool:
        return self.scale.name == "tiny"

    def horizon_after(self, context: int) -> int:
        """Frames to predict after ``context`` frames, as a number."""
        horizon = self.prediction.horizon
        return TEST_FRAMES - context if horizon is None else horizon


def experiment_parser(description: str, settings: dict) -> argparse.ArgumentParser:
    """``parser`` with the options of the paper's analyses: the scale, the rollouts and the settings to run."""
    options = parser(description, SCALES["cpu"].budget)
    options.set_defaults(budget=None)  # its default depends on the scale: make_plan fills it in
    cpu, paper, tiny = (SCALES[name].prediction for name in ("cpu", "paper", "tiny"))
    options.add_argument("--paper", action="store_true",
                         help="the paper's sizes: mmnist preset (batch 50, 100-frame sequences, z 20, analytic KL), "
                              f"predictions to the end of the {TEST_FRAMES}-frame test videos, {paper.sequences} "
                              f"test sequences, a budget of {SCALES['paper'].budget} steps")
    options.add_argument("--horizon", type=int, default=None,
                         help=f"frames predicted after the context [cpu {cpu.horizon}, paper to the end of the "
                              f"test videos (frame {TEST_FRAMES}), tiny {tiny.horizon}]")
    options.add_argument("--sequences", type=int, default=None,
                         help=f"test sequences rolled out [cpu {cpu.sequences}, paper {paper.sequences}]")
    options.add_argument("--samples", type=int, default=None, help=f"samples per test sequence [{cpu.samples}]")
    options.add_argument("--settings", default=",".join(settings),
                         help=f"comma-separated settings to run [all: {', '.join(settings)}]")
    return options


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan of parsed ``experiment_parser`` options; UserError for options that cannot work."""
    if args.paper and args.tiny:
        raise UserError("--paper and --tiny exclude each other")
    scale = SCALES["tiny" if args.tiny else "paper" if args.paper else "cpu"]
    given = {name: getattr(args, name) for name in ("horizon", "sequences", "samples")
             if getattr(args, name) is not None}
    budget = scale.budget if args.budget is None else args.budget
    if budget < 1:
        raise UserError(f"--budget must be at least 1, got {budget}")
    return Plan(scale, budget, scale.prediction.replace(**given).check(), out=args.out, progress=not args.quiet)


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


TINY_CLASSIFIER_STEPS = 3
"""Training steps of ``--tiny``'s digit classifier: a smoke test needs its outputs, not its accuracy."""


def start(doc: str, settings: dict, argv=None) -> tuple[list[str], Plan, DigitAccuracy]:
    """What every analysis script does first: parse its options (its description is the first paragraph of ``doc``),
    choose its settings, size the plan, set the threads and load the digit accuracy."""
    args = experiment_parser(description(doc), settings).parse_args(argv)
    names = chosen_settings(args, settings)
    plan = make_plan(args)
    set_threads(args.threads)
    return names, plan, digit_accuracy(plan)


def digit_accuracy(plan: Plan) -> DigitAccuracy:
    """The package's digit accuracy (its classifier trained and cached at first use: minutes on a CPU), or under
    ``--tiny`` with a classifier trained for a few steps and not cached."""
    if plan.tiny:
        return DigitAccuracy(digits.train(steps=TINY_CLASSIFIER_STEPS, batch_size=4)[0])
    return DigitAccuracy.load(None, torch.device("cuda" if torch.cuda.is_available() else "cpu"), say=print)


def content_rollout(name: str, plan: Plan, accuracy: DigitAccuracy, prior_levels: int = 0,
                    **options) -> xr.Dataset:
    """The package's rollout of run ``name`` on the test split, with measures of what the frames keep.

    ``options`` change the plan's ``PredictionOptions`` (``context``, ``horizon``). Adds to the rollout, for each
    (sample, sequence, time): ``digit_accuracy`` (the classifier reads the true pair of digits) and
    ``position_error`` (pixels between the centres of the ink of prediction and truth), and both for the truth
    and the copy-last-frame and random-frame baselines. The frames themselves are kept for the first sequence
    only (``example_prediction``, ``example_truth``). Cached in ``out/rollouts`` by the checkpoint step: a rerun
    rolls out again only a run that has trained further.
    """
    options = plan.prediction.replace(**options)
    run = load_run(plan.out / "runs" / name, options.device)
    horizon = "end" if options.horizon is None else options.horizon
    cache = (plan.out / "rollouts" / name /
             f"context{options.context_of(run.cfg)}_horizon{horizon}_prior{prior_levels}"
             f"_sequences{options.sequences}_samples{options.samples}_seed{options.seed}.nc")
    if cache.exists():
        with xr.open_dataset(cache) as cached:
            if cached.attrs["checkpoint_step"] == run.step:
                return cached.load()
    data = run.dataset(options.data_dir)
    ds = rollout(run, options, Intervention(prior_levels=prior_levels), plan.progress, dataset=data)
    ds = with_content_measures(ds, data, accuracy, options.seed)
    write_netcdf(ds, cache, encoding={name: {"zlib": True} for name in ("example_prediction", "example_truth")})
    return ds


def with_content_measures(ds: xr.Dataset, data, accuracy: DigitAccuracy, seed: int) -> xr.Dataset:
    """``content_rollout``'s measures of digit identity and position added to rollout ``ds``; its images (frames
    and their spread over samples) dropped but for the frames of the first sequence."""
    N, T, context = ds.sizes["sequence"], ds.sizes["time"], ds.attrs["context"]
    prediction, truth = ds.prediction.values, ds.truth.values
    labels, _ = accuracy.labels(truth, data)  # (N, T, 2): the generator's digits
    # The frames the rollout's random-frame baseline drew: the same call gives the same frames.
    random_frame = data.train_batch(step=-1, batch_size=N, seq_len=1, seed=seed)
    centre = ink_centre(truth)
    for suffix, frames in {"": prediction, "_truth": truth, "_last_frame": truth[:, context - 1:context],
                           "_random_frame": random_frame}.items():
        measured = MEASURED_FRAMES[suffix]
        videos = frames.reshape(-1, *frames.shape[-4:])  # samples x sequences, sample-major
        correct = accuracy.correct(accuracy.read(videos), labels[:, :videos.shape[1]]).reshape(frames.shape[:-3])
        shape = (*frames.shape[:-5], N, T)
        _add_measure(ds, "digit_accuracy" + suffix, np.broadcast_to(correct, shape), measured)
        if suffix != "_truth":
            error = np.broadcast_to(np.linalg.norm(ink_centre(frames) - centre, axis=-1), shape)
            _add_measure(ds, "position_error" + suffix, error, measured)
    frame = ("time", "channel", "y", "x")
    examples = {"example_prediction": (("sample", *frame), prediction[:, 0], ds.prediction.attrs),
                "example_truth": (frame, truth[0], ds.truth.attrs)}
    ds = ds.drop_vars([name for name, values in ds.data_vars.items() if "y" in values.dims])  # images: too large
    ds.attrs["digit_labels"] = labels[:, 0].ravel().astype(np.int32)
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


def kl_horizon(plan: Plan, cfg: Config) -> int:
    """Frames to predict after the context so that the KL table (``kl_table``) sums at least one training sequence."""
    return max(plan.horizon_after(cfg.context), cfg.seq_len - cfg.context)
