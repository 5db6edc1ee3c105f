"""What every experiment does: train named settings (resumably), and read what they learned.

A setting is a dict of config options on top of a preset (``demo`` unless it names a ``dataset``). Its run lives
in ``OUT/runs/NAME``; calling ``train`` again with a larger budget resumes it, so an interrupted experiment
continues where it stopped and a CPU-sized result can be extended to a paper-sized one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from pyro_cwvae.checkpoint import CHECKPOINT
from pyro_cwvae.config import Config
from pyro_cwvae.data.registry import open_dataset
from pyro_cwvae.history import HISTORY
from pyro_cwvae.runs import new_run_config, resume_config
from pyro_cwvae.train import fit


def parser(description: str, budget: int) -> argparse.ArgumentParser:
    """The options every experiment takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--budget", type=int, default=budget, help=f"training steps per setting [{budget}]")
    parser.add_argument("--out", type=Path, default=Path("experiments/out"), help="folder of runs and results")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and batches: a smoke test of the script")
    return parser


TINY = dict(z_size=4, h_size=8, embed_size=8, enc_dense_size=16, enc_dense_layers=2, batch_size=1, workers=0)
"""Sizes of ``--tiny``: the same levels, frames and data, networks small enough to run a script in seconds."""


def train(name: str, options: dict, budget: int, out: Path, progress: bool = True, tiny: bool = False) -> Config:
    """Train setting ``name`` to ``budget`` steps in ``out/runs/name``, resuming a run that is already there."""
    run_dir = out / "runs" / name
    options = {**options, **TINY} if tiny else options
    if (run_dir / CHECKPOINT).exists():
        cfg = resume_config({"run_dir": str(run_dir), "steps": budget})
        resume = True
    else:
        cfg = new_run_config({**options, "steps": budget, "run_dir": str(run_dir)}, overwrite=True)
        resume = False
    data = open_dataset(cfg.dataset, cfg.data_dir, speed=cfg.speed, seed=cfg.seed)
    if not resume or _trained_steps(run_dir) < budget:
        fit(cfg, data, resume=resume, progress=progress)
    return cfg


def _trained_steps(run_dir: Path) -> int:
    with xr.open_dataset(run_dir / HISTORY) as history:
        return int(history.step.max())


def history(out: Path, name: str) -> xr.Dataset:
    """The training history of setting ``name``."""
    with xr.open_dataset(out / "runs" / name / HISTORY) as ds:
        return ds.load()


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over ``window`` steps (shorter at the start), to read trends in noisy per-step terms."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0, axis=0), axis=0)
    counts = np.minimum(np.arange(1, len(values) + 1), window).reshape(-1, *([1] * (values.ndim - 1)))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (cumulative[1:] - cumulative[starts]) / counts


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
