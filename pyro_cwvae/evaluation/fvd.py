"""FVD (Unterthiner et al. 2018): the Frechet distance between Gaussians fitted to I3D features of two video sets.

As the reference implementation does: every frame is resized to 224x224 with TensorFlow 1's bilinear resize
(``tf.image.resize_bilinear``: source pixel = target pixel * in / out, no half-pixel offset), scaled to [-1, 1],
and each clip is embedded as the 400 Kinetics logits of I3D averaged over time. For feature sets with means
mu_a, mu_b and unbiased covariances S_a, S_b:

    FVD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)

in float64, with the symmetric square roots from eigendecompositions (as TF-GAN computes it). For a long horizon
the evaluation cuts each window of the predictions into 16-frame clips (the reference's clip length), embedding a
window as soon as its last frame is decoded.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.i3d import MIN_FRAMES, InceptionI3d, pretrained_i3d
from pyro_cwvae.evaluation.lpips import as_rgb, as_unit_float

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
    the videos' own), which bounds the memory, and returns on the videos' device."""
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


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D), N >= 2 each."""
    sizes_match = features_a.dim() == 2 and features_b.shape[1:] == features_a.shape[1:]
    if not sizes_match or min(len(features_a), len(features_b)) < 2:
        raise UserError(f"FVD needs two sets of at least 2 feature vectors of one size, got "
                        f"{tuple(features_a.shape)} and {tuple(features_b.shape)}")
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


# ---- FVD of a long horizon: windows of 16-frame clips -------------------------------------------------------------

CLIP_FRAMES = 16  # frames of one FVD clip: the video length the reference FVD embeds with I3D
FRAMES_PER_CALL = 128
Embedding = Callable[[np.ndarray], np.ndarray]  # clips (M, L, C, 64, 64) uint8 -> their features (M, D) float64


def clip_embedding(net: InceptionI3d, device: torch.device) -> Embedding:
    """The I3D features of uint8 clips, computed ``FRAMES_PER_CALL`` frames at a time on ``device``."""
    def embed(clips: np.ndarray) -> np.ndarray:
        return i3d_features(torch.from_numpy(clips), net, FRAMES_PER_CALL, device).cpu().numpy().astype(np.float64)

    return embed


def fvd_windows(context: int, total: int, length: int) -> tuple[range, ...]:
    """The FVD windows of ``length`` frames from the first predicted frame to ``total`` (the last may be shorter)."""
    return tuple(range(start, min(start + length, total)) for start in range(context, total, length))


def clip_layout(length: int) -> tuple[int, int]:
    """(clips, frames per clip) of a window of ``length`` frames: consecutive 16-frame clips from its start (a
    remainder left out), or the whole window as one clip when it is shorter than 16 but long enough for I3D."""
    if length >= CLIP_FRAMES:
        return length // CLIP_FRAMES, CLIP_FRAMES
    return (1, length) if length >= MIN_FRAMES else (0, length)


def clip_features(frames: np.ndarray, embed: Embedding) -> np.ndarray:
    """Features (rows, clips, D) of the clips of one window's frames (rows, length, C, 64, 64)."""
    rows, length = frames.shape[:2]
    clips, frames_per_clip = clip_layout(length)
    if clips == 0:
        return np.zeros((rows, 0, 0))
    videos = frames[:, :clips * frames_per_clip].reshape(rows * clips, frames_per_clip, *frames.shape[2:])
    return embed(videos).reshape(rows, clips, -1)


def still_clip_features(frame: np.ndarray, windows: tuple[range, ...], embed: Embedding) -> list[np.ndarray]:
    """Per window the features (N, clips, D) of clips that show one frame (N, 1, C, 64, 64) throughout; a still
    clip looks the same in every window, so each clip length is embedded once."""
    by_length, features = {}, []
    for window in windows:
        clips, frames_per_clip = clip_layout(len(window))
        if frames_per_clip not in by_length and clips:
            by_length[frames_per_clip] = embed(np.repeat(frame, frames_per_clip, axis=1))
        still = by_length.get(frames_per_clip, np.zeros((len(frame), 0)))
        features.append(np.repeat(still[:, None], clips, axis=1))
    return features


class WindowClips:
    """I3D features of the clips of each FVD window, for videos whose frames arrive a chunk of time at a time:
    a window's clips are embedded as soon as its last frame arrives, and its frames then let go."""

    def __init__(self, windows: tuple[range, ...], embed: Embedding):
        self.windows, self.embed = windows, embed
        self.features: list[np.ndarray | None] = [None] * len(windows)
        self.buffers: dict[int, np.ndarray] = {}

    def add(self, start: int, frames: np.ndarray) -> None:
        """Frames (rows, n, C, 64, 64) uint8 at times ``start`` .. ``start + n - 1``, in time order."""
        stop = start + frames.shape[1]
        for index, window in enumerate(self.windows):
            low, high = max(window.start, start), min(window.stop, stop)
            if low >= high:
                continue
            if index not in self.buffers:
                self.buffers[index] = np.empty((len(frames), len(window), *frames.shape[2:]), dtype=np.uint8)
            self.buffers[index][:, low - window.start:high - window.start] = frames[:, low - start:high - start]
            if high == window.stop:  # the window is complete
                self.features[index] = clip_features(self.buffers.pop(index), self.embed)


def frechet_or_nan(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FVD of two feature sets (M, D); NaN when either has fewer than two clips."""
    if min(len(features_a), len(features_b)) < 2:
        return float("nan")
    return frechet_distance(torch.from_numpy(features_a), torch.from_numpy(features_b))


def valid_clips(window: range, has_truth: np.ndarray) -> np.ndarray:
    """Which clips of ``window`` (N, clips) lie within their test video (``has_truth`` (N, T)): those whose last
    frame does."""
    clips, frames_per_clip = clip_layout(len(window))
    return has_truth[:, window.start + frames_per_clip * np.arange(1, clips + 1) - 1]


def windowed_fvd(windows: tuple[range, ...], has_truth: np.ndarray, features: list[np.ndarray],
                 true_features: tuple[np.ndarray, ...], samples: int) -> tuple[np.ndarray, float]:
    """FVD of each window and over the whole horizon between the clips of ``features`` (per window: rows
    samples x N, sample-major) and the true clips; clips past a test video's end (``has_truth`` (N, T)) are
    left out."""
    per_window, predicted_all, true_all = [], [], []
    for window, predicted, true in zip(windows, features, true_features):
        valid = valid_clips(window, has_truth)
        predicted, true = predicted[np.tile(valid, (samples, 1))], true[valid]
        per_window.append(frechet_or_nan(predicted, true))
        if valid.size:  # a window too short for a clip has none
            predicted_all.append(predicted)
            true_all.append(true)
    if not predicted_all:
        return np.array(per_window), float("nan")
    return np.array(per_window), frechet_or_nan(np.concatenate(predicted_all), np.concatenate(true_all))
