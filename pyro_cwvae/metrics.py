"""Per-frame PSNR and SSIM on torch tensors, matching scikit-image's definitions.

Frames are floats in [0, 1] (uint8 pixels divided by 255) and both metrics use ``data_range=1``, the
convention of the CW-VAE paper's reference evaluation, which scored float images in [0, 1]. Scores are
therefore comparable with the paper's numbers and with ``skimage.metrics`` called with ``data_range=1.0``.

Both functions take images shaped ``(..., C, H, W)`` and return one score per frame, shaped ``(...)``,
as float64 on the input's device. They run entirely in torch (no host round trip, no device sync) and
work through large batches in chunks, so memory stays within a few copies of the input.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

SSIM_WINDOW = 7
"""Side of the uniform SSIM window (scikit-image's default)."""
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_CHUNK_ELEMENTS = 1 << 20
"""Elements of one input per chunk: the float64 temporaries of a chunk stay near 100 MB."""


def psnr(pred: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each frame, ``10 log10(data_range**2 / MSE)``.

    Same as ``skimage.metrics.peak_signal_noise_ratio(truth, pred, data_range=data_range)`` per frame
    (the mean squared error is over channels and pixels). Identical frames have zero error and give
    ``+inf``, as in scikit-image.
    """

    def per_frame(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mse = (p - t).square().mean(dim=(-3, -2, -1))
        return 10.0 * torch.log10(data_range**2 / mse)

    return _per_frame(per_frame, pred, truth, min_side=1)


def ssim(pred: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity of each frame, as scikit-image computes it with its defaults.

    Equals ``skimage.metrics.structural_similarity(pred, truth, data_range=data_range, channel_axis=0)``
    per frame: local statistics over a 7x7 uniform window with sample (co)variances, constants
    ``K1=0.01`` and ``K2=0.03``, and the SSIM map averaged over the valid interior (windows that lie
    wholly inside the frame) and over channels. A frame compared with itself scores 1. Frames must be
    at least 7x7.
    """

    def per_frame(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _ssim_map(p, t, data_range).mean(dim=(-3, -2, -1))

    return _per_frame(per_frame, pred, truth, min_side=SSIM_WINDOW)


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


def _per_frame(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pred: torch.Tensor,
    truth: torch.Tensor,
    min_side: int,
) -> torch.Tensor:
    """Apply ``score`` to chunks of frames converted to float64 and reassemble the shape ``(...)``."""
    _check_frames(pred, truth, min_side)
    lead = pred.shape[:-3]
    frame_shape = pred.shape[-3:]
    pred = pred.reshape(-1, *frame_shape)
    truth = truth.reshape(-1, *frame_shape)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, frame_shape.numel()))
    scores = [
        score(p.to(torch.float64), t.to(torch.float64))
        for p, t in zip(pred.split(chunk), truth.split(chunk))
    ]
    if not scores:  # no frames at all
        return torch.empty(lead, dtype=torch.float64, device=pred.device)
    return torch.cat(scores).reshape(lead)


def _check_frames(pred: torch.Tensor, truth: torch.Tensor, min_side: int) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth differ in shape: {tuple(pred.shape)} vs {tuple(truth.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"expected frames shaped (..., C, H, W), got shape {tuple(pred.shape)}")
    if min(pred.shape[-2:]) < min_side:
        raise ValueError(f"frames must be at least {min_side}x{min_side}, got {tuple(pred.shape[-2:])}")
