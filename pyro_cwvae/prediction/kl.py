"""The KL of every level at every step of the test videos (paper Sections 3.8-3.9, Table 1)."""
from __future__ import annotations

import numpy as np
import torch
from pyro import poutine

from pyro_cwvae.model.clock import Clock
from pyro_cwvae.model.elbo import site_kl
from pyro_cwvae.model.step_sharing import sharing_steps
from pyro_cwvae.prediction.frames import unit_frames
from pyro_cwvae.prediction.run import Run

KL_FRAMES_PER_CALL = 2048  # frames the guide filters at once for the KL: memory stays flat whatever the test set


def truth_kls(run: Run, truth: np.ndarray, frames: int, device: torch.device) -> np.ndarray:
    """``level_kls`` of the first ``frames`` frames of the uint8 ``truth`` (N, T, C, 64, 64): (N, L, T), NaN from
    ``frames`` on. A group of sequences at a time, so the guide's activations stay bounded whatever N."""
    N, T = truth.shape[:2]
    kl = np.full((N, run.cfg.levels, T), np.nan, dtype=np.float32)
    group = max(1, KL_FRAMES_PER_CALL // frames)
    for start in range(0, N, group):
        rows = slice(start, start + group)
        kl[rows, :, :frames] = level_kls(run, unit_frames(truth[rows, :frames], device))
    return kl


def filtered_traces(run: Run, video: torch.Tensor) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's trace of filtering ``video`` (B, T, C, 64, 64), and the model's replayed on its draws."""
    B, T = video.shape[:2]
    with sharing_steps(run.nets):
        guide_trace = poutine.trace(run.guide).get_trace(video, run.nets, run.cfg)
        model_trace = poutine.trace(poutine.replay(run.model, trace=guide_trace)).get_trace(
            None, run.nets, run.cfg, num_frames=T, batch_size=B)
    return guide_trace, model_trace


@torch.no_grad()
def level_kls(run: Run, video: torch.Tensor) -> np.ndarray:
    """KL[q || p] in nats of every active step of every level: (B, L, T), NaN where a level is inactive."""
    B, T = video.shape[:2]
    guide_trace, model_trace = filtered_traces(run, video)
    kl = np.full((B, run.cfg.levels, T), np.nan, dtype=np.float32)
    for name, site in guide_trace.nodes.items():
        parsed = Clock.parse_site(name)
        if parsed is None or site["type"] != "sample":
            continue
        level, frame = parsed
        kl[:, level - 1, frame] = site_kl(site, model_trace.nodes[name]).cpu().numpy()
    return kl


def kl_per_sequence(kl: np.ndarray, frames: int, seq_len: int) -> np.ndarray:
    """Table 1's quantity: the KL (N, L, T) of each level summed over windows of ``seq_len`` frames (a training
    sequence) from frame 0, averaged over the windows and sequences, (L,). Only windows wholly inside the first
    ``frames`` frames (those with a KL) count; NaN where none fits."""
    N, L = kl.shape[:2]
    windows = frames // seq_len
    if windows == 0:
        return np.full(L, np.nan, dtype=np.float32)
    per_window = np.nansum(kl[:, :, :windows * seq_len].reshape(N, L, windows, seq_len), axis=-1)
    return per_window.mean(axis=(0, 2)).astype(np.float32)


NO_KL_TABLE = "none: the frames scored hold no whole training sequence (a longer --horizon or --context)"


def kl_table_variable(kl: np.ndarray, frames: int, seq_len: int) -> tuple:
    """The (dims, values, attrs) of ``kl_table(level)``: ``kl_per_sequence`` and how it was taken."""
    windows = frames // seq_len
    name = f"KL per training sequence of {seq_len} frames (Table 1)"
    attrs = {
        "units": "nats",
        "long_name": (f"{name}: summed over each window of {seq_len} frames from frame 0, mean over "
                      f"{windows} window(s) x {kl.shape[0]} sequence(s)" if windows else
                      f"{name}: none, no full window of {seq_len} frames in the {frames} frames with a KL"),
        "frames_per_sequence": seq_len,
        "windows_per_sequence": windows,
        "filtering": "the guide filters each test video from its first frame on, not afresh at each window",
    }
    return ("level",), kl_per_sequence(kl, frames, seq_len), attrs
