"""`pyro-cwvae data ...`: download, make and inspect video data folders (the main CLI's `data` group)."""
from __future__ import annotations

from pathlib import Path

import typer

from pyro_cwvae.cli.layout import command_group
from pyro_cwvae.data import DatasetError
from pyro_cwvae.data.generate import generate_moving_mnist
from pyro_cwvae.data.archives import ARCHIVES
from pyro_cwvae.data.download import download_dataset
from pyro_cwvae.data.registry import describe

app = command_group(help="Download, make and inspect video data folders.")


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


@app.command(short_help="Write generated Moving MNIST like the published archive.")
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
        _fail(f"only mmnist can be generated: {dataset} is recorded video; get {reader.archive} with "
              f"`pyro-cwvae data download {dataset} --out DIR`")
    try:
        folders, kept = generate_moving_mnist(
            out, num_train=train, num_test=test, train_length=train_length, test_length=test_length,
            speed=speed, seed=seed,
        )
    except DatasetError as error:
        _fail(error)
    if kept == train + test:
        typer.echo(f"nothing to write: the {train} training videos in {folders['train']} and {test} test videos in "
                   f"{folders['test']} were all there already")
    else:
        typer.echo(f"wrote {train} training videos to {folders['train']} and {test} test videos to {folders['test']}"
                   + (f" ({kept} of them kept from an earlier, interrupted run)" if kept else ""))


@app.command(short_help="Which dataset a folder holds, and its videos per split.")
def info(data_dir: Path = typer.Argument(..., help="A data folder or .zip archive.")) -> None:
    """Say which dataset a folder holds, and its videos per split: count, frames, size, channels."""
    try:
        lines = describe(data_dir)
    except DatasetError as error:
        _fail(error)
    for line in lines:
        typer.echo(line)


@app.command(short_help="Fetch, check and unpack a published dataset archive.")
def download(
    dataset: str = typer.Argument(..., help="mmnist, gqn, minerl or kth."),
    out: Path = typer.Option(..., "--out", help="Folder to download into and unpack into (made if missing)."),
    url: str = typer.Option(None, "--url", help="Fetch from this mirror instead: the archive's URL, or a folder URL "
                                                "ending in '/' that holds the archives (kth has six)."),
    keep_archive: bool = typer.Option(True, "--keep-archive/--no-keep-archive",
                                      help="Keep the checked archive after unpacking (default): a later run reuses "
                                           "it instead of downloading tens of GB again, and it stays checkable. "
                                           "--no-keep-archive deletes it to save its size in disk space."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Fetch a published archive (resuming an interrupted download), check its size and checksum, unpack it into
    the layout of docs/data.md, and print what `pyro-cwvae data info` says about the folder."""
    try:
        lines = download_dataset(dataset, out, url=url, keep_archive=keep_archive, progress=not quiet,
                                 echo=typer.echo)
    except DatasetError as error:
        _fail(error)
    for line in lines:
        typer.echo(line)
