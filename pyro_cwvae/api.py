"""A small Python API for notebooks: load a run, roll it out or evaluate it with the options of the command line,
and get xarray Datasets back. ``pyro-cwvae rollout`` and ``pyro-cwvae evaluate`` are thin layers over it.

    from pyro_cwvae import api

    run = api.load_run("runs/demo")
    plain = api.rollout(run, horizon=100, samples=3, sequences=4)
    swapped = api.rollout(run, horizon=100, samples=3, sequences=4, swap_levels=3, from_sequence=0)
    api.save(swapped, "runs/demo/swapped.nc")

The datasets are those the command line writes (README, "Results as xarray"); ``docs/analysis.md`` walks
through an analysis of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from .config import Config
from .data import VideoDataset
from .predict import TrainedRun, load_run as load_trained_run, rollout as predict_rollout, summary, write_rollout
from .accel import resolve_device

__all__ = ["Run", "load_run", "rollout", "evaluate", "open_rollout", "save", "summary"]


@dataclass
class Run:
    """A trained run loaded once for several rollouts: its directory and what its checkpoint holds (config,
    networks in eval mode on their device, model and guide programs, step)."""

    path: Path
    trained: TrainedRun

    @property
    def cfg(self) -> Config:
        return self.trained.cfg

    @property
    def step(self) -> int:
        return self.trained.step

    def dataset(self, data_dir: str | Path | None = None) -> VideoDataset:
        """The run's data, read from ``data_dir`` if it moved (generated Moving MNIST: from the run's seed)."""
        from .data.registry import open_dataset

        cfg = self.cfg
        return open_dataset(cfg.dataset, str(data_dir) if data_dir else cfg.data_dir, speed=cfg.speed, seed=cfg.seed)


def load_run(path: str | Path, device: str = "auto") -> Run:
    """The run in directory ``path`` on ``device`` (auto | cpu | cuda | cuda:N); ``UserError`` if it has no
    readable checkpoint or its programs changed."""
    return Run(Path(path), load_trained_run(path, resolve_device(device)))


def rollout(run: Run | str | Path, *, horizon: int = 1000, context: int | None = None, samples: int = 3,
            sequences: int = 8, seed: int = 0, prior_levels: int = 0, swap_levels: int | None = None,
            from_sequence: int | None = None, fix_level: int | None = None, protocol: str = "paper",
            data_dir: str | Path | None = None, device: str = "auto", progress: bool = False) -> xr.Dataset:
    """Open-loop predictions of the run's first ``sequences`` test videos, as ``pyro-cwvae rollout`` makes them
    (its ``--help`` says what each option does); ``device`` applies when ``run`` is a path."""
    run = run if isinstance(run, Run) else load_run(run, device)
    return predict_rollout(run.trained, run.dataset(data_dir), horizon=horizon, context=context, samples=samples,
                           sequences=sequences, seed=seed, prior_levels=prior_levels, swap_levels=swap_levels,
                           from_sequence=from_sequence, fix_level=fix_level, protocol=protocol, progress=progress)


def evaluate(runs: list[str | Path], **options) -> xr.Dataset:
    """The paper's evaluation of one or more runs side by side, as ``pyro-cwvae evaluate`` makes it; ``options``
    are the keyword arguments of ``pyro_cwvae.evaluate.evaluate`` (the command's options)."""
    from .evaluate import evaluate as run_evaluate

    return run_evaluate([Path(run) for run in runs], **{"progress": False, **options})


def open_rollout(path: str | Path) -> xr.Dataset:
    """A rollout file, read into memory and checked to be what ``rollout`` writes (``UserError`` otherwise)."""
    from .plots import read_rollout

    return read_rollout(Path(path))


def save(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a rollout as the command line does: NetCDF, written atomically, images compressed."""
    return write_rollout(ds, path)
