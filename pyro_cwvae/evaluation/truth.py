"""What every run is scored against, built once before any run and frozen: the true frames, the networks that
score them, the labels of the high-level accuracy and the I3D features of the true clips."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.evaluation.accuracy import Accuracy, accuracy_for
from pyro_cwvae.evaluation.fvd import Embedding, WindowClips, clip_embedding, fvd_windows
from pyro_cwvae.evaluation.i3d import pretrained_i3d
from pyro_cwvae.evaluation.lpips import lpips_distance, pretrained_lpips
from pyro_cwvae.model.config import Config
from pyro_cwvae.prediction.frames import read_test_frames
from pyro_cwvae.prediction.scores import Protocol

LPIPS_PAIRS_PER_CALL = 256


@dataclass(frozen=True)
class Scorers:
    """The networks that score beyond PSNR and SSIM; each left None is the published (LPIPS, I3D) or cached
    (digit classifier) one, loaded when first needed. Tests give small stand-ins."""

    lpips: nn.Module | None = None
    i3d: nn.Module | None = None
    digits: nn.Module | None = None


@dataclass(frozen=True)
class GroundTruth:
    """The true frames of the test videos and what the scorers read from them."""

    truth: np.ndarray  # uint8 (N, T, C, 64, 64), zeros past a video's end
    has_truth: np.ndarray  # (N, T)
    context: int
    protocol: Protocol
    kl_frames: int = 0  # frames every sequence has: the KL and the bounds use these
    windows: tuple[range, ...] = ()  # the FVD windows, in frames since the first context frame
    device: torch.device = torch.device("cpu")
    lpips: nn.Module | None = None  # None: no perceptual scores
    i3d: nn.Module | None = None
    accuracy: Accuracy | None = None  # None: the dataset has no high-level accuracy
    labels: np.ndarray | None = None  # the accuracy's label of each true frame (N, T, ...)
    labels_known: bool = False  # the labels come from the data, not from reading the true frames
    truth_features: tuple[np.ndarray, ...] | None = None  # I3D features (N, clips, D) of each window's true clips

    @property
    def predicted(self) -> np.ndarray:
        """(N, T): frames predicted after the context that the test video has."""
        return self.has_truth & (np.arange(self.truth.shape[1]) >= self.context)

    def embedding(self) -> Embedding:
        return clip_embedding(self.i3d, self.device)

    def lpips_of(self, frames: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """LPIPS (...) of frames against truth, both (..., C, 64, 64) in [0, 1] (clipped), on the CPU."""
        return lpips_distance(frames, truth, self.lpips, LPIPS_PAIRS_PER_CALL, self.device).cpu()


def ground_truth(dataset: VideoDataset, cfg: Config, *, sequences: int, context: int, horizon: int | None,
                 fvd_window: int, protocol: Protocol, perceptual: bool, scorers: Scorers | None,
                 device: torch.device, progress: bool) -> GroundTruth:
    """The first frames of the first ``sequences`` test videos (to the end of the longest when ``horizon`` is
    None), with the networks that score them (``scorers``, the rest loaded: LPIPS and I3D when ``perceptual``,
    the accuracy of ``cfg``'s dataset) and what those read from the true frames."""
    total = None if horizon is None else context + horizon
    truth, has_truth, shortest = read_test_frames(dataset, sequences, total, context)
    windows = fvd_windows(context, truth.shape[1], fvd_window)
    scorers = scorers or Scorers()
    lpips_net = (scorers.lpips or pretrained_lpips(device)) if perceptual else None
    i3d_net = (scorers.i3d or pretrained_i3d(device)) if perceptual else None
    accuracy = accuracy_for(cfg.dataset, dataset.channels, scorers.digits, device, print if progress else None)
    labels, labels_known = accuracy.labels(truth, dataset) if accuracy is not None else (None, False)
    truth_features = None
    if i3d_net is not None:
        clips = WindowClips(windows, clip_embedding(i3d_net, device))
        clips.add(0, truth)
        truth_features = tuple(clips.features)
    return GroundTruth(truth, has_truth, context, protocol, min(truth.shape[1], shortest), windows, device,
                       lpips_net, i3d_net, accuracy, labels, labels_known, truth_features)
