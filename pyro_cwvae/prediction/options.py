"""The options of every open-loop prediction (``rollout``, ``evaluate``, the API, the experiments), defined once as
``Config`` is for training: the commands generate their options and help from these fields; a command may choose
other defaults (``evaluate`` scores 100 sequences, as the paper), never another meaning. ``Intervention`` holds
``rollout``'s options that act on the levels (latents.py carries them out). Nothing here imports torch, so that the
command line answers ``--help`` and refuses a bad option at once."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import Config, check_range, setting


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
        from pyro_cwvae.prediction.scores import PROTOCOLS  # here: the command line reads these options, not torch

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


@dataclass(frozen=True)
class Intervention:
    """What a rollout does to its levels beyond filtering the context; the default does nothing."""

    prior_levels: int = setting(0, "Top levels that ignore the context and start from their prior.")
    swap_levels: int | None = setting(
        None, "Levels >= L take their latents, context and predicted, from sequence --from-sequence J's plain "
        "rollout (same seed and sample); the levels below filter their own context given them.")
    from_sequence: int | None = setting(None, "The sequence J that --swap-levels takes levels from.")
    fix_level: int | None = setting(None, "Hold level L's latent at its last context value for the whole "
                                    "prediction.")

    def check(self, levels: int, sequences: int) -> None:
        """``UserError`` unless the intervention fits a run of ``levels`` levels rolled out on ``sequences``."""
        if not 0 <= self.prior_levels <= levels:
            raise UserError(f"--prior-levels {self.prior_levels} must lie between 0 and the run's {levels} levels")
        if (self.swap_levels is None) != (self.from_sequence is None):
            raise UserError("--swap-levels L and --from-sequence J go together")
        if self.swap_levels is not None and not 1 <= self.swap_levels <= levels:
            raise UserError(f"--swap-levels {self.swap_levels} must lie between 1 and the run's {levels} levels")
        if self.from_sequence is not None and not 0 <= self.from_sequence < sequences:
            raise UserError(f"--from-sequence {self.from_sequence} must be one of the {sequences} sequences, "
                            f"0 to {sequences - 1}")
        if self.fix_level is not None and not 1 <= self.fix_level <= levels:
            raise UserError(f"--fix-level {self.fix_level} must lie between 1 and the run's {levels} levels")
        if self.fix_level is not None and self.swap_levels is not None and self.fix_level >= self.swap_levels:
            raise UserError(f"--fix-level {self.fix_level} must lie below --swap-levels {self.swap_levels}: "
                            "the swapped levels are another sequence's")

    def describe(self) -> str:
        """One line for the rollout file: what was done to which levels."""
        parts = []
        if self.prior_levels:
            parts.append(f"the top {self.prior_levels} level(s) ignore the context (prior)")
        if self.swap_levels is not None:
            parts.append(f"levels >= {self.swap_levels} replayed from sequence {self.from_sequence}'s rollout, "
                         "lower levels filter their own context")
        if self.fix_level is not None:
            parts.append(f"level {self.fix_level} held at its last context value during the prediction")
        return "; ".join(parts) or "none"

    def attrs(self) -> dict:
        """The rollout file's attributes of the intervention (NetCDF has no None: unused options are left out)."""
        used = {"swap_levels": self.swap_levels, "from_sequence": self.from_sequence, "fix_level": self.fix_level}
        return {"interventions": self.describe(), **{k: v for k, v in used.items() if v is not None}}
