"""A trained run, loaded once: its config, networks, model and guide programs and checkpoint step."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.data.registry import open_run_data
from pyro_cwvae.model.config import Config
from pyro_cwvae.training.checkpoint import load_trained, restore_nets
from pyro_cwvae.training.devices import resolve_device


@dataclass
class Run:
    """What a run's checkpoint holds, ready for rollouts: the networks are in eval mode on their device."""

    cfg: Config
    nets: torch.nn.Module
    model: Callable
    guide: Callable
    step: int
    path: Path | None = None  # the run directory (None for networks built in memory)

    def dataset(self, data_dir: str | Path | None = None) -> VideoDataset:
        """The run's data, read from ``data_dir`` if it moved (generated Moving MNIST: from the run's seed)."""
        return open_run_data(self.cfg, data_dir)


def load_run(path: str | Path, device: str | torch.device = "auto", trust_programs: bool = False) -> Run:
    """The run in directory ``path`` on ``device`` (auto | cpu | cuda | cuda:N); ``UserError`` if it has no
    readable checkpoint, or it was trained with program files and not ``trust_programs`` (then the sources
    recorded in its checkpoint run, not the files)."""
    device = resolve_device(device) if isinstance(device, str) else device
    state, programs = load_trained(Path(path), map_location=device, trust_programs=trust_programs)
    cfg = Config.from_dict(state["config"])
    nets = programs.make_nets(cfg).to(device)
    restore_nets(nets, state)
    return Run(cfg, nets.eval(), programs.model.fn, programs.guide.fn, state["step"], Path(path))
