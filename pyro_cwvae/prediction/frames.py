"""The frames of a rollout: the test videos and baselines it is scored against, its decoded predictions and
their PSNR and SSIM, a chunk of frames at a time so that memory stays flat whatever the horizon."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.errors import UserError
from pyro_cwvae.prediction.run import Run
from pyro_cwvae.prediction.scores import Protocol, quantize

DECODE_CHUNK = 256  # frames decoded per call: memory stays flat whatever the horizon


def read_test_frames(dataset: VideoDataset, sequences: int, total: int | None, context: int
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """The first ``total`` frames of the first test videos, uint8 (N, total, C, 64, 64) with zeros past a video's
    end, the mask of frames each video has, and the length of the shortest video (which must hold the context).
    ``total`` None: to the end of the longest video, which must reach past the context."""
    videos = dataset.test_videos(sequences)
    shortest = min(len(v) for v in videos)
    total = max(len(v) for v in videos) if total is None else total
    if context > shortest:
        raise UserError(f"--context {context} is longer than the shortest of the {sequences} test videos "
                        f"({shortest} frames)")
    if total <= context:
        raise UserError(f"the test videos end within the --context of {context} frames: nothing to predict")
    truth = np.zeros((sequences, total, dataset.channels, 64, 64), dtype=np.uint8)
    has_truth = np.zeros((sequences, total), dtype=bool)
    for n, v in enumerate(videos):
        truth[n, :len(v[:total])] = v[:total]
        has_truth[n, :len(v[:total])] = True
    return truth, has_truth, shortest


def baseline_frames(dataset: VideoDataset, truth: np.ndarray, context: int, seed: int) -> dict[str, np.ndarray]:
    """The frame each baseline shows at every time, uint8 (N, 1, C, 64, 64): the last context frame, and a random
    training frame (seeded by ``seed``)."""
    random_frames = dataset.train_batch(step=-1, batch_size=truth.shape[0], seq_len=1, seed=seed)
    return {"last_frame": truth[:, context - 1:context], "random_frame": random_frames}


def unit_frames(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 frames as floats in [0, 1] on ``device``."""
    return torch.from_numpy(np.require(frames, requirements=["C", "W"])).to(device).float().div_(255)  # copies views


def decoded_chunks(run: Run, states: torch.Tensor, progress: bool = False
                   ) -> Iterator[tuple[slice, torch.Tensor]]:
    """The decoder's float means (B, n, C, 64, 64) of consecutive chunks of the frames of ``states`` (B, T, state),
    each with its slice of time: memory stays flat whatever the horizon."""
    B, T = states.shape[:2]
    step = max(1, DECODE_CHUNK // B)
    for start in tqdm(range(0, T, step), desc="decoding", unit="chunk", disable=not progress, leave=False):
        yield slice(start, start + step), run.nets.decoder(states[:, start:start + step])


@torch.no_grad()
def decode(run: Run, states: torch.Tensor, progress: bool = False) -> np.ndarray:
    """uint8 frames (B, T, C, 64, 64) of the decoder's means, decoded a chunk of frames at a time."""
    out = np.empty((*states.shape[:2], run.cfg.channels, 64, 64), dtype=np.uint8)
    for frames, means in decoded_chunks(run, states, progress):
        out[:, frames] = quantize(means).cpu().numpy()
    return out


@dataclass
class ScoredChunk:
    """Consecutive frames of a rollout, decoded and scored: all (B, n, ...) tensors on the run's device."""

    frames: slice  # their slice of time
    means: torch.Tensor  # the decoder's float means (B, n, C, 64, 64)
    scored: torch.Tensor  # the frames the protocol scores
    truth: torch.Tensor  # the true frames in [0, 1], repeated for the samples
    psnr: torch.Tensor  # (B, n)
    ssim: torch.Tensor  # (B, n)


@torch.no_grad()
def scored_chunks(run: Run, states: torch.Tensor, truth: np.ndarray, protocol: Protocol,
                  progress: bool = False) -> Iterator[ScoredChunk]:
    """The frames of ``states`` (B, T, state) decoded and scored under ``protocol`` a chunk at a time, so the
    float means of all frames never exist at once.
    ``truth`` (N, T, C, 64, 64) uint8 is shared by the B = samples x N rows of ``states`` (sample-major)."""
    B = states.shape[0]
    for frames, means in decoded_chunks(run, states, progress):
        true = unit_frames(truth[:, frames], means.device).repeat(B // truth.shape[0], 1, 1, 1, 1)
        scored = protocol.frames(means)
        yield ScoredChunk(frames, means, scored, true, *protocol.score(scored, true))


def decode_and_score(run: Run, states: torch.Tensor, truth: np.ndarray, protocol: Protocol,
                     progress: bool = False, pixels=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``decode`` and the PSNR and SSIM (B, T) of each frame under ``protocol`` (``scored_chunks``); the spread
    over samples of each chunk goes to ``pixels`` (a ``spread.PixelSpread``) if given."""
    B, T = states.shape[:2]
    out = np.empty((B, T, run.cfg.channels, 64, 64), dtype=np.uint8)
    psnr_, ssim_ = np.empty((B, T)), np.empty((B, T))
    for chunk in scored_chunks(run, states, truth, protocol, progress):
        out[:, chunk.frames] = quantize(chunk.means).cpu().numpy()
        if pixels is not None:
            pixels.add(chunk.frames, chunk.means)
        psnr_[:, chunk.frames], ssim_[:, chunk.frames] = chunk.psnr.cpu().numpy(), chunk.ssim.cpu().numpy()
    return out, psnr_, ssim_


@torch.no_grad()
def score_frames(frames: np.ndarray, truth: np.ndarray, protocol: Protocol, device: torch.device
                 ) -> tuple[np.ndarray, np.ndarray]:
    """PSNR and SSIM (N, T) of uint8 frames against ``truth`` (N, T, C, 64, 64), a chunk of time at a time."""
    N, T = truth.shape[:2]
    frames = np.broadcast_to(frames, truth.shape)
    psnr_, ssim_ = np.empty((N, T)), np.empty((N, T))
    step = max(1, DECODE_CHUNK // N)
    for start in range(0, T, step):
        chunk = slice(start, start + step)
        scores = protocol.score(unit_frames(frames[:, chunk], device), unit_frames(truth[:, chunk], device))
        psnr_[:, chunk], ssim_[:, chunk] = (score.cpu().numpy() for score in scores)
    return psnr_, ssim_
