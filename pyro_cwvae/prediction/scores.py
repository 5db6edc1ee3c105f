"""Per-frame PSNR and SSIM on torch tensors, matching scikit-image's definitions, and the protocols that score
a rollout with them.

Two protocols differ in four conventions, each of which changes the reported numbers (``Protocol.conventions``):

- ``paper`` (the default), the CW-VAE paper's evaluation (official ``eval.py`` and ``tools.compute_metrics``,
  scikit-image 0.18.1): the decoder's raw float means (not clamped, not quantised); SSIM with no ``data_range``,
  which scikit-image 0.18 takes as 2 for floats (their dtype range is -1..1); PSNR of each channel with range 1,
  averaged over channels; per test sequence the best of N samples, chosen per metric by its mean over the
  predicted frames.
- ``standard``: the saved uint8 frames / 255, ``data_range=1`` for both metrics, PSNR's squared error pooled over
  channels, the mean over samples.

Both metric functions take images shaped ``(..., C, H, W)`` and return one score per frame, shaped ``(...)``,
as float64 on the input's device. They run entirely in torch (no host round trip, no device sync) and
work through large batches in chunks, so memory stays within a few copies of the input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 7  # side of the uniform SSIM window (scikit-image's default)
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_CHUNK_ELEMENTS = 1 << 20  # elements of one input per chunk: the float64 temporaries of a chunk stay near 100 MB


def psnr(pred: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0, per_channel: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each frame, ``10 log10(data_range**2 / MSE)``.
    Same as ``skimage.metrics.peak_signal_noise_ratio(truth, pred, data_range=data_range)`` per frame: the mean
    squared error is over channels and pixels, or with ``per_channel`` the PSNR of each channel averaged over the
    channels (as the paper's evaluation did). Identical frames have zero error and give ``+inf``, as in
    scikit-image."""

    def per_frame(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if per_channel:
            return (10.0 * torch.log10(data_range**2 / (p - t).square().mean(dim=(-2, -1)))).mean(-1)
        mse = (p - t).square().mean(dim=(-3, -2, -1))
        return 10.0 * torch.log10(data_range**2 / mse)

    return _per_frame(per_frame, pred, truth, min_side=1)


def ssim(pred: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity of each frame, as scikit-image computes it with its defaults.
    Equals ``skimage.metrics.structural_similarity(pred, truth, data_range=data_range, channel_axis=0)``
    per frame: local statistics over a 7x7 uniform window with sample (co)variances, constants
    ``K1=0.01`` and ``K2=0.03``, and the SSIM map averaged over the valid interior (windows that lie
    wholly inside the frame) and over channels. A frame compared with itself scores 1. Frames must be
    at least 7x7."""

    def per_frame(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _ssim_map(p, t, data_range).mean(dim=(-3, -2, -1))

    return _per_frame(per_frame, pred, truth, min_side=SSIM_WINDOW)


def quantize(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels of float frames in [0, 1] units: clamped, scaled by 255 and rounded (what a rollout saves)."""
    return frames.clamp(0, 1).mul_(255).round_().to(torch.uint8)


@dataclass(frozen=True)
class Protocol:
    """How a rollout's predictions are scored: one choice for each convention that changes the numbers."""

    name: str
    raw_means: bool  # score the decoder's float means as they are, not the saved uint8 frames
    ssim_range: float  # SSIM's data_range
    psnr_per_channel: bool  # PSNR of each channel averaged over channels, not of the error pooled over channels
    best_of_samples: bool  # report each sequence's best sample per metric, not the mean over samples

    def frames(self, means: torch.Tensor) -> torch.Tensor:
        """The frames this protocol scores, from the decoder's float means (in [0, 1] units)."""
        return means if self.raw_means else quantize(means).float().div_(255)

    def score(self, pred: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PSNR (dB, range 1) and SSIM of each frame of ``pred`` against ``truth``, both (..., C, H, W)."""
        return psnr(pred, truth, 1.0, self.psnr_per_channel), ssim(pred, truth, self.ssim_range)

    def conventions(self) -> dict[str, str]:
        """One line for each convention: ``frames``, ``ssim``, ``psnr`` and ``samples``."""
        return {
            "frames": ("the decoder's float means as they are (not clamped, not quantised); truth uint8 / 255"
                       if self.raw_means else "the saved frames: means clamped to [0, 1], rounded to uint8, / 255"),
            "ssim": f"7x7 uniform window, sample covariances, data_range {self.ssim_range:g}, mean over channels",
            "psnr": "data_range 1, " + ("PSNR of each channel averaged over channels" if self.psnr_per_channel
                                        else "squared error pooled over channels and pixels"),
            "samples": ("report psnr_best / ssim_best: per sequence the sample with the best mean over the predicted "
                        "frames, chosen per metric" if self.best_of_samples
                        else "report the mean of psnr / ssim over samples"),
        }


PAPER = Protocol("paper", raw_means=True, ssim_range=2.0, psnr_per_channel=True, best_of_samples=True)
STANDARD = Protocol("standard", raw_means=False, ssim_range=1.0, psnr_per_channel=False, best_of_samples=False)
PROTOCOLS = {protocol.name: protocol for protocol in (PAPER, STANDARD)}


def best_of_samples(scores: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """Per sequence, the scores of the sample with the highest mean score over the ``ranked`` frames.
    ``scores`` is (sample, sequence, time), ``ranked`` a (sequence, time) mask; returns (sequence, time). NaN
    scores are left out of the means; a sequence with no ranked score keeps its first sample."""
    masked = np.where(ranked, scores, np.nan)
    counted = ~np.isnan(masked)
    totals = np.where(counted, masked, 0).sum(-1)  # a frame predicted exactly (+inf) ranks first
    means = np.where(counted.any(-1), totals / np.maximum(counted.sum(-1), 1), -np.inf)  # (sample, sequence)
    best = means.argmax(0)
    return scores[best, np.arange(scores.shape[1])]


def _ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM map over the valid interior of float64 frames ``(B, C, H, W)``: ``(B, C, H-6, W-6)``."""
    n = x.shape[0]
    # One pooling call for all five local moments; "valid" pooling is exactly skimage's crop.
    moments = F.avg_pool2d(torch.cat([x, y, x * x, y * y, x * y]), SSIM_WINDOW, stride=1)
    ux, uy, uxx, uyy, uxy = moments.split(n)
    points = SSIM_WINDOW**2
    cov_norm = points / (points - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def _per_frame(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pred: torch.Tensor, truth: torch.Tensor,
               min_side: int) -> torch.Tensor:
    """Apply ``score`` to chunks of the checked frames converted to float64 and reassemble the shape ``(...)``."""
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth differ in shape: {tuple(pred.shape)} vs {tuple(truth.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"expected frames shaped (..., C, H, W), got shape {tuple(pred.shape)}")
    if min(pred.shape[-2:]) < min_side:
        raise ValueError(f"frames must be at least {min_side}x{min_side}, got {tuple(pred.shape[-2:])}")
    lead = pred.shape[:-3]
    frame_shape = pred.shape[-3:]
    pred = pred.reshape(-1, *frame_shape)
    truth = truth.reshape(-1, *frame_shape)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, frame_shape.numel()))
    scores = [score(p.to(torch.float64), t.to(torch.float64)) for p, t in zip(pred.split(chunk), truth.split(chunk))]
    if not scores:  # no frames at all
        return torch.empty(lead, dtype=torch.float64, device=pred.device)
    return torch.cat(scores).reshape(lead)
