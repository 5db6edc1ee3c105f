"""FVD (Unterthiner et al. 2018): the Frechet distance between Gaussians fitted to I3D features of two video sets.

As the reference implementation does: every frame is resized to 224x224 with TensorFlow 1's bilinear resize
(``tf.image.resize_bilinear``: source pixel = target pixel * in / out, no half-pixel offset), scaled to [-1, 1],
and each clip is embedded as the 400 Kinetics logits of I3D averaged over time. For feature sets with means
mu_a, mu_b and unbiased covariances S_a, S_b:

    FVD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)

in float64, with the symmetric square roots from eigendecompositions (as TF-GAN computes it).
"""
from __future__ import annotations

import torch

from .errors import UserError
from .i3d import MIN_FRAMES, InceptionI3d, pretrained_i3d
from .lpips import as_rgb, as_unit_float

SIZE = 224


def resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) weights of TF 1's bilinear resize along one axis (the upper neighbour clamped at the edge)."""
    source = torch.arange(n_out, dtype=torch.float64, device=device) * (n_in / n_out)
    lower = source.floor().long()
    upper = (lower + 1).clamp(max=n_in - 1)
    frac = source - lower
    rows = torch.arange(n_out, device=device)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64, device=device)
    weights.index_put_((rows, lower), 1 - frac, accumulate=True)
    weights.index_put_((rows, upper), frac, accumulate=True)
    return weights


def resize_bilinear_tf(frames: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Frames (..., H, W) resized to (..., size, size) as ``tf.image.resize_bilinear`` (TF 1 defaults) does."""
    rows = resize_matrix(frames.shape[-2], size, frames.device).to(frames.dtype)
    cols = resize_matrix(frames.shape[-1], size, frames.device).to(frames.dtype)
    return rows @ frames @ cols.T


def i3d_input(videos: torch.Tensor) -> torch.Tensor:
    """Videos (B, T, C, H, W) in [0, 1] or uint8 as I3D's input (B, 3, T, 224, 224) in [-1, 1]."""
    b, t = videos.shape[:2]
    frames = as_rgb(as_unit_float(videos.flatten(0, 1)))
    frames = resize_bilinear_tf(frames) * 2 - 1
    return frames.reshape(b, t, 3, SIZE, SIZE).transpose(1, 2)


@torch.no_grad()
def i3d_features(videos: torch.Tensor, net: InceptionI3d | None = None, chunk: int = 64,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The 400 FVD features (I3D logits averaged over time) of each video (B, T, C, H, W); (B, 400) float32.

    Frames are in [0, 1] (clipped) or uint8, C is 1 or 3, T >= 9; the reference embeds 16-frame clips, so cut
    longer videos into clips first. Runs about ``chunk`` frames (whole videos) at a time on ``device`` (default:
    the videos' own), which bounds the memory, and returns on the videos' device.
    """
    if videos.dim() != 5 or videos.shape[1] < MIN_FRAMES:
        raise UserError(f"FVD needs videos (B, T, C, H, W) with T >= {MIN_FRAMES}, got {tuple(videos.shape)}")
    device = torch.device(device) if device is not None else videos.device
    net = net if net is not None else pretrained_i3d(device)
    step = max(1, chunk // videos.shape[1])
    features = [net(i3d_input(videos[i:i + step].to(device))) for i in range(0, len(videos), step)]
    return torch.cat(features).to(videos.device)


def trace_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """tr(M^1/2) of a symmetric positive semi-definite M (rounding can make tiny eigenvalues negative)."""
    return torch.linalg.eigvalsh((matrix + matrix.T) / 2).clamp(min=0).sqrt().sum()


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def check_feature_sets(features_a: torch.Tensor, features_b: torch.Tensor) -> None:
    sizes_match = features_a.dim() == 2 and features_b.shape[1:] == features_a.shape[1:]
    if not sizes_match or min(len(features_a), len(features_b)) < 2:
        raise UserError(f"FVD needs two sets of at least 2 feature vectors of one size, got "
                        f"{tuple(features_a.shape)} and {tuple(features_b.shape)}")


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D), N >= 2 each."""
    check_feature_sets(features_a, features_b)
    a, b = features_a.double(), features_b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # unbiased, as TF-GAN
    root_a = sqrtm_psd(cov_a)
    means = (a.mean(0) - b.mean(0)).square().sum()
    return float(means + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt(root_a @ cov_b @ root_a))


def fvd(videos_a: torch.Tensor, videos_b: torch.Tensor, net: InceptionI3d | None = None, chunk: int = 64,
        device: torch.device | str | None = None) -> float:
    """FVD between two sets of videos (B, T, C, H, W), e.g. predictions and ground truth (B >= 2 each)."""
    net = net if net is not None else pretrained_i3d(device if device is not None else videos_a.device)
    return frechet_distance(i3d_features(videos_a, net, chunk, device), i3d_features(videos_b, net, chunk, device))
