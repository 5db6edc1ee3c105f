"""`pyro-cwvae data ...`: make and inspect video data folders (mounted by the main CLI as the `data` group)."""
from __future__ import annotations

from pathlib import Path

import typer

from pyro_cwvae.data import DatasetError
from pyro_cwvae.data.generate import generate_moving_mnist
from pyro_cwvae.data.archives import ARCHIVES
from pyro_cwvae.data.registry import describe

app = typer.Typer(help="Make and inspect video data folders.", no_args_is_help=True, add_completion=False)


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


@app.command()
def generate(
    dataset: str = typer.Argument(..., help="Only 'mmnist' can be generated; the other datasets are recordings."),
    out: Path = typer.Option(..., "--out", help="Folder to write train-seq100/ and test-seq1000/ into."),
    train: int = typer.Option(1000, "--train", help="Number of training videos."),
    test: int = typer.Option(100, "--test", help="Number of test videos."),
    train_length: int = typer.Option(100, "--train-length", help="Frames per training video."),
    test_length: int = typer.Option(1000, "--test-length", help="Frames per test video."),
    speed: float = typer.Option(1.0, "--speed", help="Digit speed factor (1.0: 2-6 pixels a frame)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the videos."),
) -> None:
    """Write generated Moving MNIST in the layout and encoding of moving_mnist_2digit.zip."""
    if dataset not in ARCHIVES:
        _fail(f"unknown dataset {dataset!r}: known datasets are {', '.join(ARCHIVES)}; only mmnist can be generated")
    if dataset != "mmnist":
        reader = ARCHIVES[dataset]
        _fail(f"only mmnist can be generated: {dataset} is recorded video, get {reader.archive} ({reader.url})")
    try:
        folders = generate_moving_mnist(
            out, num_train=train, num_test=test, train_length=train_length, test_length=test_length,
            speed=speed, seed=seed,
        )
    except DatasetError as error:
        _fail(error)
    typer.echo(f"wrote {train} training videos to {folders['train']} and {test} test videos to {folders['test']}")


@app.command()
def info(data_dir: Path = typer.Argument(..., help="A data folder or .zip archive.")) -> None:
    """Say which dataset a folder holds, and its videos per split: count, frames, size, channels."""
    try:
        lines = describe(data_dir)
    except DatasetError as error:
        _fail(error)
    for line in lines:
        typer.echo(line)
