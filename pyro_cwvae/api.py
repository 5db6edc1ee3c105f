"""A small Python API for notebooks: load a run, roll it out or evaluate it with the options of the command line,
and get xarray Datasets back. ``pyro-cwvae rollout`` and ``pyro-cwvae evaluate`` are thin layers over it.

    from pyro_cwvae import api

    run = api.load_run("runs/demo")
    plain = api.rollout(run, horizon=100, samples=3, sequences=4)
    swapped = api.rollout(run, horizon=100, samples=3, sequences=4, swap_levels=3, from_sequence=0)
    api.save(swapped, "runs/demo/swapped.nc")

A run trained with program files (``--model``/``--guide``) runs the sources recorded in its checkpoint, and only
with ``trust_programs=True``: a run someone sent may hold any code. The options are the fields of
``PredictionOptions`` (and, for ``rollout``, of ``Intervention``), with the same meaning as on the command line.
The datasets are those the command line writes (README, "Results as xarray"); ``docs/analysis.md`` walks through
an analysis of them.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from pathlib import Path

import xarray as xr

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.prediction.options import EVALUATE_DEFAULTS, FIELDS, Intervention, PredictionOptions
from pyro_cwvae.prediction.rollout import rollout as rollout_run, summary, write_rollout
from pyro_cwvae.prediction.run import Run, load_run

__all__ = ["Run", "load_run", "rollout", "evaluate", "open_rollout", "save", "summary"]


def rollout(run: Run | str | Path, *, dataset: VideoDataset | None = None, progress: bool = False,
            trust_programs: bool = False, **options) -> xr.Dataset:
    """Open-loop predictions of the first test videos of ``dataset`` (default: the run's data), as ``pyro-cwvae
    rollout`` makes them (its ``--help`` says what each option does); ``device`` and ``trust_programs`` (see
    ``load_run``) apply when ``run`` is a path."""
    _check_options(rollout, options, (*FIELDS, *(field.name for field in dataclasses.fields(Intervention))))
    prediction = PredictionOptions(**{name: options.pop(name) for name in FIELDS if name in options})
    intervention = Intervention(**options)
    run = run if isinstance(run, Run) else load_run(run, prediction.device, trust_programs)
    return rollout_run(run, prediction, intervention, progress, dataset=dataset)


def evaluate(runs: list[str | Path], *, particles: int = 0, fvd_window: int = 100, perceptual: bool = True,
             dataset: VideoDataset | None = None, scorers=None, progress: bool = False, trust_programs: bool = False,
             **options) -> xr.Dataset:
    """The paper's evaluation of one or more runs side by side, as ``pyro-cwvae evaluate`` makes it (its
    ``--help`` says what each option does; by default 100 sequences, one sample each)."""
    from pyro_cwvae.evaluation.evaluate import evaluate as evaluate_runs

    _check_options(evaluate, options, FIELDS)
    prediction = PredictionOptions(**{**EVALUATE_DEFAULTS, **options})
    return evaluate_runs([Path(run) for run in runs], prediction, particles=particles, fvd_window=fvd_window,
                         perceptual=perceptual, dataset=dataset, scorers=scorers, progress=progress,
                         trust_programs=trust_programs)


def _check_options(function, options: dict, known: tuple[str, ...]) -> None:
    """A TypeError that names ``function``, each of ``options`` it does not know, the closest known name, and all of
    its keywords (its own and ``known``, those its ``**options`` take)."""
    unknown = [name for name in options if name not in known]
    if unknown:
        own = [name for name, parameter in inspect.signature(function).parameters.items()
               if parameter.kind is parameter.KEYWORD_ONLY]
        guesses = [f"{name!r}" + "".join(f" (did you mean {match!r}?)" for match in
                                          difflib.get_close_matches(name, [*known, *own], n=1)) for name in unknown]
        raise TypeError(f"{function.__name__}() got unknown option(s) {', '.join(guesses)}; "
                        f"its options: {', '.join([*known, *own])}")


def open_rollout(path: str | Path) -> xr.Dataset:
    """A rollout file, read into memory and checked to be what ``rollout`` writes (``UserError`` otherwise)."""
    from pyro_cwvae.plots.files import read_rollout

    return read_rollout(Path(path))


def save(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a rollout as the command line does: NetCDF, written atomically, images compressed."""
    return write_rollout(ds, path)
