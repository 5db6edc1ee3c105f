"""Interventions on the levels of a rollout, and the spread of a rollout over its samples.

A plain rollout filters the context with the guide and draws every later latent from the model's prior
(``predict.context_latents``, ``predict.open_loop_states``). Because the model and guide are Pyro programs with
one site ``s_{l}_{t}`` per level and step, any level can be replaced or held with poutine handlers on the run's
own programs, so a user's variant is intervened on as written:

- ``prior_levels`` N: the top N levels ignore the context and start from their prior (paper Section 3.6, Fig. 7);
- ``swap_levels`` L with ``from_sequence`` J: the sites of levels >= L, context and prediction, are replayed from
  sequence J's plain rollout (same seed, same sample), and the levels below filter their own context frames
  conditioned on them: the slow levels of one video with the fast levels of another;
- ``fix_level`` L: level L's sites after the context are conditioned (``poutine.condition``) on its last context
  site's value, so the latent of that level stops changing. Its GRU state h is no site but a deterministic
  function of the latents, so it still steps on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from .clock import Clock
from .config import Config
from .errors import UserError
from .metrics import quantize
from .predict import TrainedRun, context_latents, latents_level_by_level, trace_until, unit_frames


@dataclass(frozen=True)
class Intervention:
    """What a rollout does to its levels beyond filtering the context; the default does nothing."""

    prior_levels: int = 0  # top levels that ignore the context
    swap_levels: int | None = None  # levels >= this one take their latents from sequence ``from_sequence``
    from_sequence: int | None = None
    fix_level: int | None = None  # the level held at its last context value during the prediction

    def check(self, levels: int, sequences: int) -> None:
        """``UserError`` unless the intervention fits a run of ``levels`` levels rolled out on ``sequences``."""
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


@torch.no_grad()
def rollout_trace(run: TrainedRun, context: torch.Tensor, num_frames: int, sequences: int,
                  intervention: Intervention = Intervention()) -> poutine.Trace:
    """The model's trace of a rollout over ``num_frames`` frames given the ``context`` frames (B, C_T, C, 64, 64),
    B = samples x ``sequences`` rows, sample-major, under ``intervention``. The level-1 states (B, T, state), the
    decoder's input, are the trace's ``_RETURN`` value.

    Noise is drawn in this order: for a swap, first sequence J's plain rollout of the swapped levels; then the
    context's latents (``predict.context_latents``); then the model's prior over the remaining sites.
    """
    B, T = context.shape[:2]
    with run.nets.sharing_deterministic_path():  # the passes reuse each other's GRU steps
        if intervention.swap_levels is None:
            decided = context_latents(run, context, intervention.prior_levels)
        else:
            swapped = swapped_sites(run, context, num_frames, sequences, intervention)
            decided = latents_level_by_level(run, context, intervention.prior_levels, given=swapped)
        model = poutine.replay(run.model, trace=decided)
        if intervention.fix_level is not None:
            model = poutine.condition(model, data=held_sites(run.cfg, decided, intervention.fix_level, T,
                                                              num_frames))
        return poutine.trace(model).get_trace(None, run.nets, run.cfg, num_frames=num_frames, batch_size=B)


def sampled_trace(run: TrainedRun, truth: np.ndarray, context: int, samples: int, intervention: Intervention,
                  seed: int) -> poutine.Trace:
    """``rollout_trace`` of ``samples`` predictions of each ``truth`` video (N, T, C, 64, 64) uint8 from its first
    ``context`` frames, over all T frames, the noise seeded by ``seed``. Without an intervention its states are
    the draws of ``predict.open_loop_states`` (the same passes in the same order)."""
    pyro.set_rng_seed(seed)
    device = next(run.nets.parameters()).device
    context_video = unit_frames(truth[:, :context], device).repeat(samples, 1, 1, 1, 1)
    return rollout_trace(run, context_video, truth.shape[1], truth.shape[0], intervention)


def swapped_sites(run: TrainedRun, context: torch.Tensor, num_frames: int, sequences: int,
                  intervention: Intervention) -> poutine.Trace:
    """The sites of levels >= ``swap_levels`` over all ``num_frames`` frames, every row holding the value that row
    of sequence ``from_sequence`` (the same sample) has in the plain rollout: a point mass at that value.

    The plain rollout is run only as far as those sites: its context latents, then the model's prior down to the
    first site below them.
    """
    cfg, clock = run.cfg, run.cfg.clock
    B = context.shape[0]
    names = [clock.site_name(level, frame) for level in range(cfg.levels, intervention.swap_levels - 1, -1)
             for frame in clock.active_frames(level, num_frames)]
    plain = context_latents(run, context, intervention.prior_levels)
    upper = trace_until(run.model, plain, set(names), None, run.nets, cfg, num_frames=num_frames, batch_size=B)
    swapped = poutine.Trace()
    for name in names:
        site = upper.nodes[name]
        value = site["value"]
        donor = value.view(B // sequences, sequences, *value.shape[1:])[:, intervention.from_sequence]
        value = donor.repeat_interleave(sequences, 0)  # row s x N + n gets sample s of sequence J
        swapped.add_node(name, **{**site, "value": value, "fn": dist.Delta(value, event_dim=site["fn"].event_dim)})
    return swapped


def held_sites(cfg: Config, decided: poutine.Trace, level: int, context_frames: int, num_frames: int
               ) -> dict[str, torch.Tensor]:
    """Every site of ``level`` after the ``context_frames``, mapped to the value of its last context site."""
    clock = cfg.clock
    frames = clock.active_frames(level, num_frames)
    last = max(frame for frame in frames if frame < context_frames)
    value = decided.nodes[clock.site_name(level, last)]["value"]
    return {clock.site_name(level, frame): value for frame in frames if frame >= context_frames}


def latent_spread(trace: poutine.Trace, levels: int, samples: int, num_frames: int) -> np.ndarray:
    """How much the samples disagree at every latent site: (N, L, T), the standard deviation over samples (n - 1
    in the denominator) of each dimension of z_t^l, root-mean-square over the dimensions; NaN where a level is
    inactive. The trace's rows are samples x N, sample-major."""
    spread = None
    for name, site in trace.nodes.items():
        parsed = Clock.parse_site(name)
        if parsed is None or site["type"] != "sample":
            continue
        level, frame = parsed
        z = site["value"].reshape(samples, -1, site["value"][0].numel()).double()  # (samples, N, dims)
        if spread is None:
            spread = np.full((z.shape[1], levels, num_frames), np.nan, dtype=np.float32)
        spread[:, level - 1, frame] = z.var(0).mean(-1).sqrt().cpu().numpy()
    return spread


class PixelSpread:
    """Mean and standard deviation over samples of the decoded frames, taken a chunk of frames at a time while
    the rollout decodes (all samples of a frame are in one chunk), stored as uint8 on the 0-255 scale."""

    def __init__(self, samples: int, sequences: int, num_frames: int, channels: int):
        shape = (sequences, num_frames, channels, 64, 64)
        self.samples = samples
        self.mean = np.empty(shape, dtype=np.uint8)
        self.std = np.empty(shape, dtype=np.uint8) if samples > 1 else None  # no spread from one sample

    def add(self, frames: slice, means: torch.Tensor) -> None:
        """Take in the decoder's means (samples x N, n, C, 64, 64) of the frames ``frames``."""
        pixels = means.clamp(0, 1).view(self.samples, -1, *means.shape[1:])  # what the saved frames show
        self.mean[:, frames] = quantize(pixels.mean(0)).cpu().numpy()
        if self.std is not None:
            self.std[:, frames] = quantize(pixels.std(0)).cpu().numpy()

    def variables(self) -> dict:
        """The rollout file's ``prediction_mean`` and (with two samples or more) ``prediction_std``."""
        frame = ("sequence", "time", "channel", "y", "x")
        how = ("over the samples of the decoder's means clipped to [0, 1], scaled by 255 and rounded "
               "(finer than the spread of the saved uint8 frames)")
        out = {"prediction_mean": (frame, self.mean, {"long_name": f"mean {how}",
                                                       "units": "pixel intensity 0-255"})}
        if self.std is not None:
            out["prediction_std"] = (frame, self.std, {
                "long_name": f"standard deviation (n - 1 in the denominator) {how}",
                "units": "pixel intensity 0-255"})
        return out


def spread_variables(trace: poutine.Trace, pixels: PixelSpread, levels: int) -> dict:
    """The rollout file's variables of the spread over samples: ``prediction_mean``, and with two samples or more
    ``prediction_std`` and ``latent_std``."""
    out = pixels.variables()
    if pixels.samples > 1:
        out["latent_std"] = latent_spread_variable(latent_spread(trace, levels, pixels.samples,
                                                                 pixels.mean.shape[1]))
    return out


def latent_spread_variable(spread: np.ndarray) -> tuple:
    """The (dims, values, attrs) of ``latent_std(sequence, level, time)``."""
    return ("sequence", "level", "time"), spread, {
        "units": "1 (the latent's own units)",
        "long_name": "spread of z_t^l over the samples: standard deviation (n - 1) of each dimension, "
                     "root-mean-square over the dimensions (NaN: level inactive)"}
