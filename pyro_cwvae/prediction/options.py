"""The options of every open-loop prediction (``rollout``, ``evaluate``, the API, the experiments), defined once as
``Config`` is for training: the commands generate their options and help from these fields; a command may choose
other defaults (``evaluate`` scores 100 sequences, as the paper), never another meaning."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import Config, check_range, setting
from pyro_cwvae.prediction.scores import PROTOCOLS


@dataclass(frozen=True)
class PredictionOptions:
    context: Optional[int] = setting(
        None, "Frames given before the prediction (default: the run's --context, 36 in the presets). As in the "
        "official code, level l filters floor(context / k**(l-1)) steps; a step whose k**(l-1) frames are not all "
        "in the context is drawn from the prior, and the levels below filter conditioned on it.", (1, 100_000))
    horizon: Optional[int] = setting(
        None, "Frames predicted after the context (default: to the end of the test videos, frame 1000 in the "
        "paper's test sets).", (1, 100_000))
    samples: int = setting(3, "Predictions per sequence.", (1, 1000))
    sequences: int = setting(8, "Test sequences, the first ones in the split's fixed order.", (1, 100_000))
    seed: int = setting(0, "Seed of the predictions: the same seed draws the same predictions in every command.",
                        (0, 2**32 - 1))
    protocol: str = setting(
        "paper", "paper: PSNR/SSIM as the paper's evaluation computed them (raw float means, SSIM range 2, PSNR "
        "per channel, best of the samples per sequence); standard: on the saved uint8 frames, range 1, PSNR "
        "pooled over channels, mean over samples.")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N.")
    data_dir: Optional[str] = setting(None, "Where the run's data is now, if it moved.")

    def check(self) -> "PredictionOptions":
        """``UserError`` in one line for values that cannot work whatever the run, before anything is allocated."""
        for field in dataclasses.fields(self):
            value, within = getattr(self, field.name), field.metadata.get("within")
            if within is not None and value is not None:
                check_range(field.name, value, *within)
        frames = self.samples * self.sequences * ((self.context or 0) + (self.horizon or 0))
        if frames > MAX_PREDICTED_FRAMES:
            raise UserError(f"--samples {self.samples} x --sequences {self.sequences} x (--context + --horizon) "
                            f"is {frames:,} frames, more than the {MAX_PREDICTED_FRAMES:,} one rollout holds")
        if self.protocol not in PROTOCOLS:
            raise UserError(f"--protocol {self.protocol!r} is none of {', '.join(PROTOCOLS)}")
        return self

    def context_of(self, cfg: Config) -> int:
        """The context frames for a run of ``cfg``: the option, else the run's own."""
        return cfg.context if self.context is None else self.context

    def replace(self, **changes: Any) -> "PredictionOptions":
        return dataclasses.replace(self, **changes)


MAX_PREDICTED_FRAMES = 10_000_000  # uint8 64x64 RGB frames: 120 GiB, past any machine's memory for one file
FIELDS = tuple(field.name for field in dataclasses.fields(PredictionOptions))
EVALUATE_DEFAULTS = {"sequences": 100, "samples": 1}
"""``evaluate``'s own defaults: the paper's 100 test sequences, one prediction each."""
