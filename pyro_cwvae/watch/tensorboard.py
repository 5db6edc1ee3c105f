"""TensorBoard logging of a training run (``--tensorboard auto|on|off``; the ``tensorboard`` extra).

The event files go into the run directory itself, so ``tensorboard --logdir runs`` shows every run under ``runs/``
side by side, named by its directory. The scalars are history.nc's, one point per step, under the tags of
``scalars`` (``train/loss``, ``kl/level_2``, ...), with the training speed and the learning rate at every log; a
preview adds its values (``preview/ssim``, ...), its strip and its video. A resumed run drops what an earlier,
interrupted process logged after the checkpoint (TensorBoard's purge step), so every curve is the run's own.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import Config
from pyro_cwvae.model.programs import Programs
from pyro_cwvae.training.history import Row
from pyro_cwvae.training.watching import Watcher

INSTALL = 'pip install "pyro-cwvae[tensorboard]"'
FLUSH_SECONDS = 30  # at most this long before what is logged shows in TensorBoard (and at every checkpoint)


def scalars(row: Row) -> dict[str, float]:
    """The tags and values of one history row: history.nc's variables, and the share of the KL above level 1
    (in %: whether the slow levels are in use)."""
    values = {"train/loss": row.loss, "train/reconstruction": row.reconstruction, "train/grad_norm": row.grad_norm,
              "train/kl_scale": row.kl_scale}
    values.update({f"kl/level_{level}": float(kl) for level, kl in enumerate(row.kl, start=1)})
    if len(row.kl) > 1:
        values["kl/share_above_level_1"] = float(100 * np.sum(row.kl[1:]) / np.sum(row.kl))
    return values


class TensorBoardLog(Watcher):
    """Writes the event files of the run in ``run_dir`` (the writer opens once training starts)."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the extra: see ``tensorboard_for``

        self.run_dir, self.open_writer, self.writer = Path(run_dir), SummaryWriter, None

    def started(self, step: int, programs: Programs) -> None:
        self.writer = self.open_writer(str(self.run_dir), purge_step=step + 1, flush_secs=FLUSH_SECONDS)

    def logged(self, rows: list[Row], steps_per_second: float, lr: float) -> None:
        for row in rows:
            for tag, value in scalars(row).items():
                self.writer.add_scalar(tag, value, row.step)
        self.writer.add_scalar("speed/steps_per_second", steps_per_second, rows[-1].step)
        self.writer.add_scalar("train/learning_rate", lr, rows[-1].step)

    def preview(self, step: int, values: dict[str, float], strip: np.ndarray, video: bytes) -> None:
        """A preview's values, its strip (uint8 H, W, C) and its video (GIF bytes)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        for name, value in values.items():
            self.writer.add_scalar(f"preview/{name}", value, step)
        self.writer.add_image("preview/strip", strip, step, dataformats="HWC")
        # torch's add_video needs moviepy 1 to make its GIF; the summary it writes is this one.
        with Image.open(io.BytesIO(video)) as gif:
            width, height = gif.size
        image = Summary.Image(height=height, width=width, colorspace=strip.shape[2], encoded_image_string=video)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="preview/video", image=image)]), step)

    def saved(self, step: int) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def tensorboard_for(cfg: Config, say=print) -> TensorBoardLog | None:
    """The TensorBoard log of ``cfg.tensorboard``: ``auto`` logs when the package is installed (else ``say``s so
    once), ``on`` insists (``UserError`` without it), ``off`` never logs."""
    if cfg.tensorboard == "off":
        return None
    try:
        return TensorBoardLog(cfg.run_dir)
    except ImportError:
        if cfg.tensorboard == "on":
            raise UserError(f"--tensorboard on needs the tensorboard package: {INSTALL}") from None
        if say is not None:
            say(f"note: no TensorBoard logging (to watch runs live: {INSTALL})")
        return None
