"""The ``pyro-cwvae`` command line: each command builds a config, calls one library function, reports.

Bad input of any kind ends with a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from .cli_checkpoint import app as checkpoint_app
from .cli_classifier import app as classifier_app
from .cli_data import app as data_app
from .cli_weights import app as weights_app
from .config import COMPILE_MODES, PRECISIONS
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


class Elbo(str, Enum):
    trace = "trace"
    meanfield = "meanfield"


Precision = Enum("Precision", {name: name for name in PRECISIONS}, type=str)
CompileMode = Enum("CompileMode", {name: name for name in COMPILE_MODES}, type=str)


@app.command()
def fit(
    dataset: Optional[str] = typer.Option(None, help="mmnist | gqn | minerl | kth; none: the demo on generated Moving MNIST."),
    data_dir: Optional[Path] = typer.Option(None, help="The unpacked archive (mmnist without it: generated on the fly)."),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run is written [default: runs/<dataset>-<time>]."),
    levels: Optional[int] = typer.Option(None, help="Levels of latent chains L."),
    factor: Optional[int] = typer.Option(None, help="Temporal abstraction factor k."),
    z_size: Optional[int] = typer.Option(None, help="Stochastic state size per level."),
    h_size: Optional[int] = typer.Option(None, help="Deterministic (GRU) state size per level."),
    embed_size: Optional[int] = typer.Option(None, help="Hidden width of the RSSM cells."),
    dec_std: Optional[float] = typer.Option(None, help="Stddev of the Normal likelihood of the frames."),
    steps: Optional[int] = typer.Option(None, help="Total optimisation steps."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per batch."),
    seq_len: Optional[int] = typer.Option(None, help="Frames per training sequence."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    model: Optional[Path] = typer.Option(None, help="A model program file (default: the packaged models/cwvae.py)."),
    guide: Optional[Path] = typer.Option(None, help="A guide program file (default: the packaged guides/cwvae.py)."),
    elbo: Optional[Elbo] = typer.Option(None, help="trace: Trace_ELBO (Monte-Carlo KL); meanfield: TraceMeanField_ELBO "
                                        "(analytic KL, as the official code) [default: meanfield for --dataset, trace "
                                        "for the demo]."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    precision: Optional[Precision] = typer.Option(None, help="tf32 (CUDA) or bf16 autocast instead of fp32."),
    compile: Optional[CompileMode] = typer.Option(None, help="torch.compile the networks (default: none)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the weights, the noise and the batches."),
    speed: Optional[float] = typer.Option(None, help="Generated Moving MNIST: digit speed multiplier."),
    workers: Optional[int] = typer.Option(None, help="Data-loading worker processes."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints."),
    kl_warmup: Optional[int] = typer.Option(None, help="Steps of linear KL annealing (0: none)."),
    kl_balance: Optional[float] = typer.Option(None, help="Share of each level's KL gradient that trains the "
                                               "posterior, the rest trains the prior (official kl_grad_post_perc)."),
    free_nats: Optional[float] = typer.Option(None, help="Nats per sequence and level the KL term leaves free."),
    kl_beta: Optional[str] = typer.Option(None, help="Weight of each level's KL term, level 1 first: e.g. 1,0.5,0.5."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a --run-dir that holds a run."),
    max_bad_steps: int = typer.Option(0, min=0, help="Skip up to this many steps with a non-finite loss or gradient."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Train a CW-VAE with stochastic variational inference."""
    from .data.registry import open_dataset
    from .runs import new_run_config, resume_config
    from .train import fit as run_fit

    given = dict(dataset=dataset, data_dir=data_dir, run_dir=run_dir, levels=levels, factor=factor, z_size=z_size,
                 h_size=h_size, embed_size=embed_size, dec_std=dec_std, steps=steps,
                 batch_size=batch_size, seq_len=seq_len, lr=lr, model=model, guide=guide, elbo=elbo,
                 device=device, precision=precision, compile=compile, seed=seed, speed=speed, workers=workers,
                 checkpoint_every=checkpoint_every, kl_warmup=kl_warmup, kl_balance=kl_balance, free_nats=free_nats,
                 kl_beta=weights(kl_beta))
    options = {k: plain(v) for k, v in given.items() if v is not None}
    cfg = resume_config(options) if resume else new_run_config(options, overwrite)
    data = open_dataset(cfg.dataset, cfg.data_dir, speed=cfg.speed, seed=cfg.seed)
    result = run_fit(cfg, data, resume=resume, max_bad_steps=max_bad_steps, progress=not quiet)
    if len(result.history) and result.rank == 0:
        first, last = result.history.rows[0], result.history.last()
        typer.echo(f"step {result.step}: loss {first[1]:.2f} -> {last[1]:.2f} nats/frame; run in {result.run_dir}")
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
    file: Path = typer.Argument(..., help="A rollout or evaluation NetCDF file."),
    out: Optional[Path] = typer.Option(None, help="Folder for the figures [default: beside FILE]."),
    sequences: int = typer.Option(4, help="Sequences shown in the frame strips and the GIF."),
):
    """Figures of a rollout (frame strips, PSNR/SSIM over the horizon, KL per level, a GIF) or of an evaluation
    (every run's curves on one axis, FVD per window, KL per level)."""
    from .plots import read_rollout, write_figures
    from .plots_eval import is_evaluation, read_evaluation, write_evaluation_figures

    if is_evaluation(file):
        paths = write_evaluation_figures(read_evaluation(file), out or file.parent)
    else:
        paths = write_figures(read_rollout(file), out or file.parent, max_sequences=sequences)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def weights(text: Optional[str]) -> Optional[list[float]]:
    """``1,0.5,0.5`` as a list of floats (None stays None)."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--kl-beta takes comma-separated numbers, one per level, got {text!r}") from None


def plain(value):
    """Option values as they go into the JSON config: paths as strings, enums as their value."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


def main() -> None:
    app()
