"""The ``pyro-cwvae`` command line: each command builds a config, calls one library function, reports.

Bad input of any kind ends with a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from pathlib import Path
from typing import Callable, Optional

import typer
from typer.core import TyperGroup

from .cli_checkpoint import app as checkpoint_app
from .cli_classifier import app as classifier_app
from .cli_data import app as data_app
from .cli_weights import app as weights_app
from .config import FIELDS, Config, option
from .data import DatasetError
from .errors import UserError


# typer raises click's exceptions (or those of the click it vendors, in newer releases): find their classes.
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
ClickException, UsageError = _CLICK["ClickException"], _CLICK["UsageError"]


class OneLineErrors(TyperGroup):
    """Every user error, from click's option parsing or from our code, becomes one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from .train import NumericalError

        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (UserError, DatasetError) as error:
            code = fail(str(error), 2)
        except UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # a bare command: show its help
                error.show()
                code = 0
            else:
                code = fail(error.format_message(), 2)
        except ClickException as error:
            code = fail(error.format_message(), error.exit_code)
        except typer.Abort:
            code = fail("aborted", 130)
        except NumericalError as error:
            code = fail(f"{error}; the last good checkpoint is kept (--max-bad-steps skips bad steps)", 1)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def fail(message: str, code: int) -> int:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return code


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Clockwork Variational Autoencoders as Pyro programs.")
app.add_typer(data_app, name="data")
app.add_typer(classifier_app, name="classifier")
app.add_typer(weights_app, name="weights")
app.add_typer(checkpoint_app, name="checkpoint")


def config_options(command: Callable) -> Callable:
    """``command`` with one option per ``Config`` field (``--z-size``, ...; help from the field), passed to it as
    ``settings``: a dict of the values given, None for the others."""
    hints = typing.get_type_hints(Config)
    generated = [
        inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY,
                          annotation=Optional[option_type(hints[field.name])],
                          default=typer.Option(None, flag_names(field.name, hints[field.name]),
                                               help=field.metadata["help"], show_default=False))
        for field in dataclasses.fields(Config)
    ]

    @functools.wraps(command)
    def with_settings(**values):
        settings = {name: parse_setting(name, values.pop(name), hints[name]) for name in FIELDS}
        return command(settings=settings, **values)

    own = [param for param in inspect.signature(command).parameters.values() if param.name != "settings"]
    with_settings.__signature__ = inspect.Signature(own + generated)
    return with_settings


def flag_names(name: str, hint) -> str:
    """A field's option: ``--z-size``; a true-or-false field both ways (``--deterministic/--no-deterministic``),
    so that an option set in a config file can be switched off."""
    return f"--{option(name)}/--no-{option(name)}" if field_type(hint) is bool else f"--{option(name)}"


def field_type(hint) -> type:
    """The type of a field of type ``hint`` without its None: ``Optional[float]`` -> float."""
    return next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint)


def option_type(hint) -> type:
    """The type a field's command-line option parses: lists are given comma-separated, as one string."""
    return str if typing.get_origin(field_type(hint)) is list else field_type(hint)


def parse_setting(name: str, value, hint):
    """An option's value as the config holds it: ``1,0.5,0.5`` as a list of numbers for a list field."""
    if value is None or typing.get_origin(field_type(hint)) is not list:
        return value
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise UserError(f"--{option(name)} takes comma-separated numbers, got {value!r}") from None


@app.command()
@config_options
def fit(
    settings: dict,
    config: Optional[Path] = typer.Option(None, help="Start from this config file (a preset from configs/, or a "
                                          "run's config.json) instead of the dataset's preset; options override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a --run-dir that holds a run."),
    max_bad_steps: int = typer.Option(0, min=0, help="Skip up to this many steps with a non-finite loss or gradient."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Train a CW-VAE with stochastic variational inference. Every setting comes from the dataset's preset
    (configs/<dataset>.toml; the demo without --dataset) or --config FILE, then the options given here."""
    from .data.registry import open_dataset
    from .distributed import launched_ranks
    from .runs import new_run_config, resume_config
    from .train import fit as run_fit

    options = {name: value for name, value in settings.items() if value is not None}
    if resume and config is not None:
        raise UserError("--resume continues with the run's own config: leave out --config")
    if "run_dir" not in options and launched_ranks() > 1:  # each process would pick its own time stamp
        raise UserError("--run-dir is required when several processes train together")
    cfg = resume_config(options) if resume else new_run_config(options, overwrite, config)
    for warning in cfg.warnings():
        typer.echo(f"warning: {warning}", err=True)
    data = open_dataset(cfg.dataset, cfg.data_dir, speed=cfg.speed, seed=cfg.seed)
    result = run_fit(cfg, data, resume=resume, max_bad_steps=max_bad_steps, progress=not quiet)
    if len(result.history) and result.rank == 0:
        first, last = result.history.rows[0], result.history.last()
        typer.echo(f"step {result.step}: loss {first.loss:.2f} -> {last.loss:.2f} nats/frame; run in {result.run_dir}")
        if not result.interrupted:
            typer.echo(f"next: pyro-cwvae rollout --run {result.run_dir} && "
                       f"pyro-cwvae plot {result.run_dir / 'rollout.nc'}")
    if result.interrupted:
        raise typer.Exit(130)  # the conventional code of a program stopped by a signal


@app.command()
def rollout(
    run: Path = typer.Option(..., help="The run directory of a trained model."),
    horizon: int = typer.Option(1000, help="Frames to predict after the context."),
    context: Optional[int] = typer.Option(
        None, help="Frames given before the prediction (default: the run's, 36). As in the official code, level l "
        "filters floor(context / k**(l-1)) steps; a step whose k**(l-1) frames are not all in the context is drawn "
        "from the prior, and the levels below filter conditioned on it."),
    samples: int = typer.Option(3, help="Predictions per sequence."),
    sequences: int = typer.Option(8, help="Test sequences, the first ones in the split's fixed order."),
    prior_levels: int = typer.Option(0, help="Top levels that ignore the context and start from their prior."),
    swap_levels: Optional[int] = typer.Option(
        None, help="Levels >= L take their latents, context and predicted, from sequence --from-sequence J's plain "
        "rollout (same seed and sample); the levels below filter their own context given them."),
    from_sequence: Optional[int] = typer.Option(None, help="The sequence J that --swap-levels takes levels from."),
    fix_level: Optional[int] = typer.Option(
        None, help="Hold level L's latent at its last context value for the whole prediction."),
    seed: int = typer.Option(0, help="Seed of the predictions."),
    protocol: str = typer.Option(
        "paper", help="paper: PSNR/SSIM as the paper's evaluation computed them (raw float means, SSIM range 2, "
        "PSNR per channel, best of the samples per sequence); standard: on the saved uint8 frames, range 1, "
        "PSNR pooled over channels, mean over samples."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the run's data is now, if it moved."),
    out: Optional[Path] = typer.Option(None, help="The NetCDF file to write (default: RUN/rollout.nc)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Open-loop predictions, their spread over samples, their PSNR/SSIM with baselines, and per-level KLs, as one
    NetCDF file; optionally with levels swapped, held or started from the prior."""
    from . import api

    ds = api.rollout(run, horizon=horizon, context=context, samples=samples, sequences=sequences, seed=seed,
                     prior_levels=prior_levels, swap_levels=swap_levels, from_sequence=from_sequence,
                     fix_level=fix_level, protocol=protocol, data_dir=data_dir, device=device, progress=not quiet)
    path = api.save(ds, out or run / "rollout.nc")
    typer.echo(f"wrote {path}: {samples} x {sequences} sequences, {ds.sizes['time']} frames; interventions: "
               f"{ds.attrs['interventions']}\n{api.summary(ds)}")


@app.command()
def evaluate(
    runs: list[Path] = typer.Argument(..., help="Run directories, compared side by side (trained on the same data)."),
    out: Path = typer.Option(Path("eval.nc"), help="The NetCDF file to write."),
    sequences: int = typer.Option(100, help="Test sequences, the first ones in the split's fixed order."),
    context: int = typer.Option(36, help="Frames given before the prediction."),
    horizon: Optional[int] = typer.Option(None, help="Frames to predict (default: to the end of the test videos)."),
    samples: int = typer.Option(1, help="Predictions per sequence; the paper protocol reports the best of them."),
    particles: int = typer.Option(0, help="K of the importance-weighted bound IWAE_K beside the ELBO (0: none)."),
    fvd_window: int = typer.Option(100, help="Frames of the horizon per FVD window."),
    protocol: str = typer.Option("paper", help="paper or standard, as for rollout."),
    perceptual: bool = typer.Option(True, help="LPIPS and FVD (--no-perceptual: without the published weights)."),
    seed: int = typer.Option(0, help="Seed of the predictions (the same draws as rollout with this seed)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the runs' data is now, if it moved."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """SSIM, PSNR, LPIPS, FVD and the digit or room accuracy of open-loop predictions, with baselines and the
    per-level KL, for every run in one NetCDF file."""
    from .evaluate import evaluate as run_evaluate, summary, write_evaluation

    ds = run_evaluate(runs, sequences=sequences, context=context, horizon=horizon, samples=samples,
                      particles=particles, fvd_window=fvd_window, protocol=protocol, perceptual=perceptual,
                      seed=seed, device=device, data_dir=data_dir, progress=not quiet)
    path = write_evaluation(ds, out)
    typer.echo(f"wrote {path}: {ds.sizes['run']} run(s), {sequences} sequences, {ds.attrs['horizon']} frames "
               f"predicted (means over the predicted frames)\n{summary(ds)}")


@app.command()
def plot(
    file: Path = typer.Argument(..., help="A rollout, evaluation or training history (history.nc) NetCDF file."),
    out: Optional[Path] = typer.Option(None, help="Folder for the figures [default: beside FILE]."),
    sequences: int = typer.Option(4, help="Sequences shown in the frame strips and the GIF."),
):
    """Figures of a rollout (frame strips, PSNR/SSIM over the horizon, KL per level, a GIF), of an evaluation
    (every run's curves on one axis, FVD per window, KL per level) or of a run's training history (loss and the KL
    of each level against the step)."""
    from .plots import read_rollout, write_figures
    from .plots_eval import is_evaluation, read_evaluation, write_evaluation_figures
    from .plots_history import is_history, read_history, write_history_figure

    if is_evaluation(file):
        paths = write_evaluation_figures(read_evaluation(file), out or file.parent)
    elif is_history(file):
        paths = write_history_figure(read_history(file), out or file.parent)
    else:
        paths = write_figures(read_rollout(file), out or file.parent, max_sequences=sequences)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def main() -> None:
    app()
