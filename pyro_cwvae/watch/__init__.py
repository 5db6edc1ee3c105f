"""Watching a run while it trains: TensorBoard logging (``tensorboard.py``) and previews (``preview.py``), the
watchers ``pyro-cwvae fit`` hands the training loop (``training/watching.py`` says what a watcher may do)."""
from __future__ import annotations

from typing import Callable

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import Config
from pyro_cwvae.training.watching import Watcher
from pyro_cwvae.watch.preview import Previews
from pyro_cwvae.watch.tensorboard import TensorBoardLog, tensorboard_for

__all__ = ["Previews", "TensorBoardLog", "watchers_for"]


def watchers_for(cfg: Config, dataset: VideoDataset, say: Callable[[str], None] | None = print) -> list[Watcher]:
    """The watchers of a run of ``cfg``: its TensorBoard log (``--tensorboard``) and previews (``--preview-every``),
    set up before training starts. Previews that the data cannot give (test videos shorter than the context) are
    left out with a warning: the preset asks for them whether or not the user did."""
    board = tensorboard_for(cfg, say)
    watchers: list[Watcher] = [] if board is None else [board]
    if cfg.preview_every and cfg.steps >= cfg.preview_every:
        try:
            watchers.append(Previews(cfg, dataset, board=board, say=say))
        except UserError as error:
            if say is not None:
                say(f"warning: training without {error}")
    return watchers
