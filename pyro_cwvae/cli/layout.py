"""How every command group of the command line is made, in one place."""
from __future__ import annotations

import typer


def command_group(**settings) -> typer.Typer:
    """A typer app with click's plain help layout (rich's cuts long option names at 80 columns), no shell
    completion, and its help when called without a command."""
    return typer.Typer(rich_markup_mode=None, add_completion=False, no_args_is_help=True, **settings)
