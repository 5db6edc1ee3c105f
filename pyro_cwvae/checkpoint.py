"""Checkpoints: everything a run needs to continue exactly, saved atomically.

A checkpoint holds the networks, the optimizer, the step, every random-number state, the resolved config, the
model and guide source files and the package version, so that a resumed run continues bit for bit and a
checkpoint loaded against a different model, level count or image size is refused with a reason.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pyro.util
import torch

from . import __version__
from .atomic import atomic_path
from .config import Config
from .errors import UserError

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


def rng_state() -> dict[str, Any]:
    """This process's random states: torch (CPU and CUDA), Python and numpy."""
    state = {"pyro": pyro.util.get_rng_state()}  # torch CPU, python and numpy
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    pyro.util.set_rng_state(state["pyro"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, *, step: int, cfg: Config, nets, optimizer, programs, rng: list) -> Path:
    """Write the checkpoint; ``rng`` holds the random state of every training process, in rank order."""
    state = {
        "format": FORMAT,
        "version": __version__,
        "step": step,
        "config": cfg.to_dict(),
        "nets": nets.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "programs": {p_kind: {"path": p.path, "source": p.source} for p_kind, p in zip(("model", "guide"), programs)},
    }
    target = Path(run_dir) / CHECKPOINT
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    return target


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint of ``run_dir``; UserError if it is missing, truncated or not a pyro-cwvae checkpoint."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise UserError(f"no checkpoint in {run_dir}: expected {path}")
    try:
        # weights_only=False: the file holds RNG states (numpy arrays, tuples); it is our own output.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise UserError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a pyro-cwvae checkpoint of format {FORMAT}")
    if state["version"] != __version__:
        warnings.warn(f"{path} was written by pyro-cwvae {state['version']}; this is {__version__}")
    return state


def restore_nets(nets: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load the checkpoint's weights; UserError naming the first tensor that does not fit the model."""
    try:
        nets.load_state_dict(state["nets"])
    except RuntimeError as error:
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise UserError(f"the checkpoint's weights do not fit the configured model: {detail}") from error
