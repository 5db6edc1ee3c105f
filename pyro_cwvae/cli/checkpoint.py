"""`pyro-cwvae checkpoint ...`: look after run checkpoints (mounted by the main CLI as the `checkpoint` group)."""
from __future__ import annotations

from pathlib import Path

import typer

from pyro_cwvae.cli.layout import command_group

app = command_group(help="Look after run checkpoints.")


@app.command(short_help="Rewrite a run's checkpoint in the current format.")
def upgrade(
    run: Path = typer.Argument(..., help="The run directory whose checkpoint to rewrite."),
    trust: bool = typer.Option(False, "--trust", help="Read it with the full pickle loader, which runs any code "
                                                      "the file holds: only for a file from a source you trust."),
) -> None:
    """Rewrite a run's checkpoint in the current format, which loads without running code."""
    from pyro_cwvae.training.checkpoint import CHECKPOINT, FORMAT, upgrade_checkpoint

    found = upgrade_checkpoint(run, trust=trust)
    if found == FORMAT:
        typer.echo(f"{run / CHECKPOINT} is already format {FORMAT}: left as it is")
    else:
        typer.echo(f"rewrote {run / CHECKPOINT} from format {found} to format {FORMAT}")
