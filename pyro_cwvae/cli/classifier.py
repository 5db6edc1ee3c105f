"""`pyro-cwvae classifier ...`: the Moving MNIST digit classifier of the digit accuracy (mounted as `classifier`)."""
from __future__ import annotations

import typer

from pyro_cwvae.cli.layout import command_group
from pyro_cwvae.evaluation.digit_record import (BATCH_SIZE, SEED, STEPS, TEST_VIDEOS, Record, classifier_path,
                                                read_record)
from pyro_cwvae.evaluation.sources import ENV_VAR

app = command_group(help="The digit classifier that scores digit identities in Moving MNIST predictions.")


@app.command(short_help="Train the classifier on generated frames and cache it.")
def train(
    steps: int = typer.Option(STEPS, min=1, help="Optimisation steps."),
    batch_size: int = typer.Option(BATCH_SIZE, min=2, help="Generated frames per step."),
    seed: int = typer.Option(SEED, help="Seed of the weights and of the training frames."),
    test_videos: int = typer.Option(TEST_VIDEOS, min=1, help="Test videos whose frames measure the accuracy."),
    force: bool = typer.Option(False, "--force", help="Train again even if a classifier is cached."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train the classifier on generated frames of the training digits and cache it (minutes on a CPU)."""
    from pyro_cwvae.evaluation.digits import train_and_save

    record = read_record()
    if record is not None and not force:
        typer.echo(f"a classifier is cached (--force trains a new one): {describe(record)}")
        return
    record = train_and_save(steps, batch_size, seed, progress=not quiet, test_videos=test_videos)
    typer.echo(f"trained in {record.train_seconds:.0f} s: {describe(record)}")


@app.command(short_help="Check the cached classifier and say how it was trained.")
def info() -> None:
    """Check the cached classifier; say where it is, how it was trained, and its accuracy on ground-truth frames."""
    from pyro_cwvae.evaluation.digits import load

    record = read_record()
    if record is None:
        typer.echo(f"no classifier cached in {classifier_path().parent} (set {ENV_VAR} to use another folder); "
                   "`pyro-cwvae classifier train` makes one")
        return
    load(classifier_path())  # refuses weights that do not match their recorded checksum
    typer.echo(describe(record))
    typer.echo("per digit: " + ", ".join(f"{c}: {a:.3f}" for c, a in record.digit_accuracy.items()))


def describe(record: Record) -> str:
    return (f"{classifier_path()}: {record.steps} steps x {record.batch_size} frames, seed {record.seed}; pair "
            f"accuracy {record.pair_accuracy:.3f} on {record.test_frames} ground-truth test frames")
