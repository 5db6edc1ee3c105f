"""The options of every open-loop prediction (``rollout``, ``evaluate``, the API, the experiments), defined once as
``Config`` is for training: the commands generate their options and help from these fields; a command may choose
other defaults (``evaluate`` scores 100 sequences, as the paper), never another meaning."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import Config
from pyro_cwvae.prediction.scores import PROTOCOLS


def setting(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PredictionOptions:
    context: Optional[int] = setting(
        None, "Frames given before the prediction (default: the run's --context, 36 in the presets). As in the "
        "official code, level l filters floor(context / k**(l-1)) steps; a step whose k**(l-1) frames are not all "
        "in the context is drawn from the prior, and the levels below filter conditioned on it.")
    horizon: Optional[int] = setting(
        None, "Frames predicted after the context (default: to the end of the test videos, frame 1000 in the "
        "paper's test sets).")
    samples: int = setting(3, "Predictions per sequence.")
    sequences: int = setting(8, "Test sequences, the first ones in the split's fixed order.")
    seed: int = setting(0, "Seed of the predictions: the same seed draws the same predictions in every command.")
    protocol: str = setting(
        "paper", "paper: PSNR/SSIM as the paper's evaluation computed them (raw float means, SSIM range 2, PSNR "
        "per channel, best of the samples per sequence); standard: on the saved uint8 frames, range 1, PSNR "
        "pooled over channels, mean over samples.")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N.")
    data_dir: Optional[str] = setting(None, "Where the run's data is now, if it moved.")

    def check(self) -> "PredictionOptions":
        """``UserError`` in one line for values that cannot work whatever the run."""
        for name in ("context", "horizon", "samples", "sequences"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be at least 1, got {value}")
        if self.protocol not in PROTOCOLS:
            raise UserError(f"--protocol {self.protocol!r} is none of {', '.join(PROTOCOLS)}")
        return self

    def context_of(self, cfg: Config) -> int:
        """The context frames for a run of ``cfg``: the option, else the run's own."""
        return cfg.context if self.context is None else self.context

    def replace(self, **changes: Any) -> "PredictionOptions":
        return dataclasses.replace(self, **changes)


FIELDS = tuple(field.name for field in dataclasses.fields(PredictionOptions))
EVALUATE_DEFAULTS = {"sequences": 100, "samples": 1}
"""``evaluate``'s own defaults: the paper's 100 test sequences, one prediction each."""
