"""The ``pyro-cwvae`` command line: each command builds a config, calls one library function, reports.

Bad input of any kind ends with a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from pyro_cwvae.cli.checkpoint import app as checkpoint_app
from pyro_cwvae.cli.classifier import app as classifier_app
from pyro_cwvae.cli.data import app as data_app
from pyro_cwvae.cli.layout import command_group
from pyro_cwvae.cli.options import TRUST_PROGRAMS, config_options, dataclass_options
from pyro_cwvae.cli.weights import app as weights_app
from pyro_cwvae.data import DatasetError
from pyro_cwvae.errors import NumericalError, UserError, program_failure
from pyro_cwvae.files.reading import checkpoint_file, printable
from pyro_cwvae.prediction.options import EVALUATE_DEFAULTS, Intervention, PredictionOptions


# typer raises click's exceptions (or those of the click it vendors, in newer releases): find their classes.
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
ClickException, UsageError = _CLICK["ClickException"], _CLICK["UsageError"]


class OneLineErrors(TyperGroup):
    """Every user error, from click's option parsing or from our code, becomes one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
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
        except Exception as error:  # a bug in the user's program: its own lines, not the package's around them
            failure = program_failure(error)
            if failure is None:
                raise
            typer.echo("Traceback (most recent call last), from the program on:\n" + failure[0].rstrip("\n"),
                       err=True)
            code = fail(failure[1], 1)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx):
        """Ctrl-C says so (typer exits 130 in silence); ``fit`` handles it itself, saving its checkpoint first."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise typer.Exit(fail("interrupted", 130)) from None


def echo_above_bar(message: str) -> None:
    """A line on stderr that leaves a progress bar where it is."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def fail(message: str, code: int) -> int:
    typer.echo(f"error: {printable(' '.join(message.split()))}", err=True)
    return code


app = command_group(cls=OneLineErrors, pretty_exceptions_enable=False,
                    help="Clockwork Variational Autoencoders as Pyro programs.")
app.add_typer(data_app, name="data")
app.add_typer(classifier_app, name="classifier", short_help="The digit classifier of the digit accuracy.")
app.add_typer(weights_app, name="weights")
app.add_typer(checkpoint_app, name="checkpoint")


@app.command()
@config_options
def fit(
    settings: dict,
    config: Optional[Path] = typer.Option(None, help="Start from this config file (a preset from configs/, or a "
                                          "run's config.json) instead of the dataset's preset; options override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a --run-dir that holds a run."),
    max_bad_steps: int = typer.Option(0, min=0, help="Skip up to this many steps with a non-finite loss or gradient, "
                                       "in the whole run (a resume counts those already skipped)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar, start line or preview lines (warnings, "
                                                      "errors and the closing lines still show)."),
    trust_programs: bool = TRUST_PROGRAMS,
):
    """Train a CW-VAE with stochastic variational inference. Every setting comes from the dataset's preset
    (configs/<dataset>.toml; the demo without --dataset) or --config FILE, then the options given here."""
    if resume and not overwrite and config is None and settings.get("run_dir"):  # those conflicts are named first
        checkpoint_file(settings["run_dir"])  # a mistyped run, refused before the seconds of importing torch
    from pyro_cwvae.data.registry import open_run_data
    from pyro_cwvae.training.loop import fit as run_fit
    from pyro_cwvae.training.run_config import run_config
    from pyro_cwvae.watch import watchers_for

    options = {name: value for name, value in settings.items() if value is not None}
    cfg = run_config(options, resume=resume, overwrite=overwrite, config_file=config, trust_programs=trust_programs)
    for warning in cfg.warnings():
        typer.echo(f"warning: {warning}", err=True)
    data = open_run_data(cfg)
    watchers = watchers_for(cfg, data, say=None if quiet else echo_above_bar)
    result = run_fit(cfg, data, resume=resume, max_bad_steps=max_bad_steps, progress=not quiet, watchers=watchers)
    if len(result.history) and result.rank == 0:
        typer.echo(f"step {result.step}: {loss_summary([row.loss for row in result.history.rows])}; "
                   f"run in {result.run_dir}")
        if not result.interrupted:
            trust = " --trust-programs" if cfg.model or cfg.guide else ""  # a run's own programs are not the default
            typer.echo(f"next: pyro-cwvae rollout --run {result.run_dir}{trust} && "
                       f"pyro-cwvae plot {result.run_dir / 'rollout.nc'}")
    if result.interrupted:
        raise typer.Exit(130)  # the conventional code of a program stopped by a signal


def loss_summary(losses: list[float]) -> str:
    """The loss at the start and at the end of a run: one batch's is noisy, so the mean over up to 10 steps at each
    end, of the steps taken (a skipped step's loss is NaN)."""
    n = max(1, min(10, len(losses) // 2))

    def mean(values: list[float]) -> float:
        taken = [value for value in values if math.isfinite(value)]
        return sum(taken) / len(taken) if taken else math.nan
    return (f"loss {mean(losses[:n]):.2f} -> {mean(losses[-n:]):.2f} nats/frame (mean of the first and the last {n} "
            f"step{'s' if n > 1 else ''})")


@app.command(short_help="Open-loop predictions of test videos, scored, KL per level.")
@dataclass_options(Intervention, "intervention", defaults={})
@dataclass_options(PredictionOptions, "options", defaults={})
def rollout(
    options: dict,
    intervention: dict,
    run: Path = typer.Option(..., help="The run directory of a trained model."),
    out: Optional[Path] = typer.Option(None, help="The NetCDF file to write (default: RUN/rollout.nc)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    trust_programs: bool = TRUST_PROGRAMS,
):
    """Open-loop predictions, their spread over samples, their PSNR/SSIM with baselines, and per-level KLs, as one
    NetCDF file; optionally with levels swapped, held or started from the prior."""
    checkpoint_file(run)  # a mistyped run, refused before the seconds of importing torch
    from pyro_cwvae import api

    ds = api.rollout(run, **options, **intervention, progress=not quiet, trust_programs=trust_programs)
    path = api.save(ds, out or run / "rollout.nc")
    typer.echo(f"wrote {path}: {ds.sizes['sample']} sample(s) x {ds.sizes['sequence']} sequence(s), "
               f"{ds.sizes['time']} frames; interventions: {ds.attrs['interventions']}\n{api.summary(ds)}")


@app.command(short_help="The paper's metrics of one or more runs and the baselines.")
@dataclass_options(PredictionOptions, "options", defaults=EVALUATE_DEFAULTS)
def evaluate(
    options: dict,
    runs: list[Path] = typer.Argument(..., help="Run directories, compared side by side (trained on the same data)."),
    out: Path = typer.Option(Path("eval.nc"), help="The NetCDF file to write."),
    particles: int = typer.Option(0, help="K of the importance-weighted bound IWAE_K beside the ELBO (0: none)."),
    fvd_window: int = typer.Option(100, help="Frames of the horizon per FVD window."),
    perceptual: bool = typer.Option(True, help="LPIPS and FVD (--no-perceptual: without the published weights)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    trust_programs: bool = TRUST_PROGRAMS,
):
    """SSIM, PSNR, LPIPS, FVD and the digit or room accuracy of open-loop predictions, with baselines and the
    per-level KL, for every run in one NetCDF file."""
    for run in runs:
        checkpoint_file(run)  # a mistyped run, refused before the seconds of importing torch
    from pyro_cwvae import api
    from pyro_cwvae.evaluation.evaluate import summary, write_evaluation

    ds = api.evaluate(runs, **options, particles=particles, fvd_window=fvd_window, perceptual=perceptual,
                      progress=not quiet, trust_programs=trust_programs)
    path = write_evaluation(ds, out)
    typer.echo(f"wrote {path}: {ds.sizes['run']} run(s), {ds.sizes['sequence']} sequence(s), {ds.attrs['horizon']} "
               f"frames predicted (means over the predicted frames)\n{summary(ds)}")


@app.command(short_help="Figures of a rollout, an evaluation or a training history.")
def plot(
    file: Path = typer.Argument(..., help="A rollout, evaluation or training history (history.nc) NetCDF file."),
    out: Optional[Path] = typer.Option(None, help="Folder for the figures (default: the folder of FILE)."),
    sequences: int = typer.Option(4, help="Sequences shown in the frame strips and the GIF."),
):
    """Figures of a rollout (frame strips, PSNR/SSIM over the horizon, KL per level, a GIF), of an evaluation
    (every run's curves on one axis, FVD per window, KL per level) or of a run's training history (loss and the KL
    of each level against the step)."""
    from pyro_cwvae.plots.files import read_rollout
    from pyro_cwvae.plots.rollout import write_figures
    from pyro_cwvae.plots.evaluation import is_evaluation, read_evaluation, write_evaluation_figures
    from pyro_cwvae.plots.history import is_history, read_history, write_history_figure

    if is_evaluation(file):
        paths = write_evaluation_figures(read_evaluation(file), out or file.parent)
    elif is_history(file):
        paths = write_history_figure(read_history(file), out or file.parent)
    else:
        paths = write_figures(read_rollout(file), out or file.parent, max_sequences=sequences)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, like the errors: what the user should know, not where it was raised."""
    typer.echo(f"warning: {printable(' '.join(str(message).split()))}", err=True)


def main() -> None:
    warnings.showwarning = show_warning
    app()
