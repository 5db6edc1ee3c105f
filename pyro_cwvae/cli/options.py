"""Command-line options generated from a dataclass's fields, each with the help its field carries: ``fit``'s
from ``Config``, ``rollout``'s and ``evaluate``'s from ``PredictionOptions`` (and ``Intervention``)."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, Optional

import typer

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import Config, option


def dataclass_options(cls: type, into: str, defaults: Optional[dict[str, Any]] = None) -> Callable:
    """A decorator: the command with one option per field of ``cls`` (``--z-size``, ...), passed to it as ``into``,
    a dict of the values. With ``defaults`` None an option not given is None (the command knows what to do
    then); otherwise it is ``defaults[name]``, else the field's default, shown in ``--help``."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)

    def generated(field: dataclasses.Field) -> inspect.Parameter:
        hint = hints[field.name]
        default = None if defaults is None else defaults.get(field.name, field.default)
        return inspect.Parameter(
            field.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[option_type(hint)],
            default=typer.Option(default, flag_names(field.name, hint), help=field.metadata["help"],
                                 show_default=default is not None))

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def with_values(**values):
            given = {field.name: parse_setting(field.name, values.pop(field.name), hints[field.name])
                     for field in fields}
            return command(**{into: given}, **values)

        own = [param for param in inspect.signature(command).parameters.values() if param.name != into]
        with_values.__signature__ = inspect.Signature(own + [generated(field) for field in fields])
        return with_values

    return decorate


config_options = dataclass_options(Config, "settings")
"""``fit``'s options: every ``Config`` field, None where not given (the preset or config file decides)."""

TRUST_PROGRAMS = typer.Option(False, "--trust-programs", help="Run the program files (--model/--guide) that a run "
                              "or a --config file names (a run: the sources recorded in its checkpoint); without "
                              "it they are refused, since a run someone sent may hold any code.")
"""``fit``'s, ``rollout``'s and ``evaluate``'s ``--trust-programs``."""


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
    """An option's value as the dataclass holds it: ``1,0.5,0.5`` as a list of numbers for a list field."""
    if value is None or typing.get_origin(field_type(hint)) is not list:
        return value
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise UserError(f"--{option(name)} takes comma-separated numbers, got {value!r}") from None
