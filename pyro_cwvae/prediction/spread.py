"""How much the samples of a rollout disagree: in the latents of every level, and in the decoded frames."""
from __future__ import annotations

import numpy as np
import torch
from pyro import poutine

from pyro_cwvae.model.clock import Clock
from pyro_cwvae.prediction.scores import quantize


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
    ``prediction_std`` and ``latent_std(sequence, level, time)``."""
    out = pixels.variables()
    if pixels.samples > 1:
        out["latent_std"] = ("sequence", "level", "time"), latent_spread(
            trace, levels, pixels.samples, pixels.mean.shape[1]), {
            "units": "1 (the latent's own units)",
            "long_name": "spread of z_t^l over the samples: standard deviation (n - 1) of each dimension, "
                         "root-mean-square over the dimensions (NaN: level inactive)"}
    return out
