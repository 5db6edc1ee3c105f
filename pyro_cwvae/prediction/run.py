"""A trained run, loaded once: its config, networks, model and guide programs and checkpoint step."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.data.registry import open_run_data
from pyro_cwvae.model.config import Config
from pyro_cwvae.model.programs import check_programs_match, load_programs
from pyro_cwvae.training.checkpoint import load_checkpoint, restore_nets
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


def load_run(path: str | Path, device: str | torch.device = "auto") -> Run:
    """The run in directory ``path`` on ``device`` (auto | cpu | cuda | cuda:N); ``UserError`` if it has no
    readable checkpoint or its programs changed."""
    device = resolve_device(device) if isinstance(device, str) else device
    state = load_checkpoint(Path(path), map_location=device)
    cfg = Config.from_dict(state["config"])
    programs = load_programs(cfg.model, cfg.guide)
    check_programs_match(state, programs)
    nets = programs.make_nets(cfg).to(device)
    restore_nets(nets, state)
    return Run(cfg, nets.eval(), programs.model.fn, programs.guide.fn, state["step"], Path(path))
