"""The numbers of one run, and of the baselines, against the ground truth: per-time curves of every metric, FVD
per window and over the horizon, the Table 1 KL and the bounds. A run's predictions are drawn exactly as
``pyro-cwvae rollout`` draws them for the same seed, then decoded and scored a chunk of frames at a time."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.evaluation.bounds import FRAMES_PER_CALL, importance_weighted_bound
from pyro_cwvae.evaluation.fvd import WindowClips, still_clip_features, windowed_fvd
from pyro_cwvae.evaluation.truth import LPIPS_PAIRS_PER_CALL, GroundTruth
from pyro_cwvae.prediction.frames import baseline_frames, score_frames, scored_chunks, unit_frames
from pyro_cwvae.prediction.kl import kl_table_variable, truth_kls
from pyro_cwvae.prediction.latents import sampled_trace
from pyro_cwvae.prediction.options import Intervention
from pyro_cwvae.prediction.run import Run
from pyro_cwvae.prediction.scores import best_of_samples, quantize

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
"""The metrics a best-of-N protocol picks a sample for (the accuracies are means over samples)."""


@dataclass(frozen=True)
class Scores:
    """What one prediction (a run's, or a baseline's) scores: a curve (T,) per metric, and FVD when perceptual."""

    curves: dict[str, np.ndarray]
    fvd: np.ndarray | None = None  # per window
    fvd_horizon: float | None = None


@dataclass(frozen=True)
class RunScores:
    """Every number of one run."""

    scores: Scores
    kl_table: xr.Variable  # Table 1: the KL per training sequence of each level
    checkpoint_step: int
    iwae: np.ndarray | None = None  # (N,) nats per frame, with particles
    elbo: np.ndarray | None = None


def score_run(name: str, run: Run, test: GroundTruth, samples: int, particles: int, seed: int, bar: tqdm,
              progress: bool) -> RunScores:
    """The curves, FVD, Table 1 KL and, with ``particles``, the bounds of ``run`` (``bar`` counts its stages)."""
    bar.set_postfix_str(f"{name}: predicting {samples} sample(s) x {test.truth.shape[0]} sequence(s)")
    states = sampled_trace(run, test.truth, test.context, samples, Intervention(), seed).nodes["_RETURN"]["value"]
    bar.update()
    bar.set_postfix_str(f"{name}: decoding and scoring")
    scores = score_predictions(run, states, test, samples, progress)
    del states
    bar.update()
    bar.set_postfix_str(f"{name}: per-level KL")
    kl_table = xr.Variable(*kl_table_variable(truth_kls(run, test.truth, test.kl_frames, test.device),
                                              test.kl_frames, run.cfg.seq_len))
    bar.update()
    if not particles:
        return RunScores(scores, kl_table, run.step)
    bar.set_postfix_str(f"{name}: importance-weighted bound, {particles} particles")
    iwae, elbo = bounds(run, test, particles)
    bar.update()
    return RunScores(scores, kl_table, run.step, iwae, elbo)


def score_predictions(run: Run, states: torch.Tensor, test: GroundTruth, samples: int, progress: bool) -> Scores:
    """The scores of the predictions decoded from ``states`` (samples x N, T, state), from one pass over chunks of
    frames: per frame SSIM, PSNR, LPIPS and the accuracy's readings, and the I3D features of each FVD window."""
    B, T = states.shape[:2]
    metrics = ("psnr", "ssim") if test.lpips is None else ("psnr", "ssim", "lpips")
    scores = {name: np.full((B, T), np.nan) for name in metrics}
    clips = WindowClips(test.windows, test.embedding()) if test.i3d is not None else None
    readings = None
    for chunk in scored_chunks(run, states, test.truth, test.protocol, progress):
        t = chunk.frames
        scores["psnr"][:, t], scores["ssim"][:, t] = chunk.psnr.cpu().numpy(), chunk.ssim.cpu().numpy()
        pixels = quantize(chunk.means)  # the saved uint8 frames: what a viewer, the accuracy and I3D see
        if test.lpips is not None:
            scores["lpips"][:, t] = test.lpips_of(chunk.scored, chunk.truth).numpy()
        if test.accuracy is not None:
            read = test.accuracy.read(pixels)
            readings = np.zeros((B, T, *read.shape[2:]), read.dtype) if readings is None else readings
            readings[:, t] = read
        if clips is not None:
            clips.add(t.start, pixels.cpu().numpy())
    if test.accuracy is not None:
        scores[test.accuracy.name] = test.accuracy.correct(readings, test.labels)
    fvd = () if clips is None else windowed_fvd(test.windows, test.has_truth, clips.features, test.truth_features,
                                                samples)
    return Scores(curves(scores, test, samples), *fvd)


def bounds(run: Run, test: GroundTruth, particles: int) -> tuple[np.ndarray, np.ndarray]:
    """IWAE_K and the ELBO (N,) in nats per frame of the first ``kl_frames`` frames of each test video, a group of
    sequences at a time (their float frames never all exist at once)."""
    iwae, elbo = [], []
    group = max(1, FRAMES_PER_CALL // test.kl_frames)
    for start in range(0, len(test.truth), group):
        video = unit_frames(test.truth[start:start + group, :test.kl_frames], test.device)
        weights = importance_weighted_bound(run, video, particles)
        iwae.append(weights.iwae)
        elbo.append(weights.elbo)
    return np.concatenate(iwae), np.concatenate(elbo)


def curves(scores: dict[str, np.ndarray], test: GroundTruth, samples: int) -> dict[str, np.ndarray]:
    """Per-time curves (T,) from per-frame scores (samples x N, T): per sequence the best sample of each metric
    under a best-of-N protocol (else every sample), then the mean over sequences."""
    N, T = test.has_truth.shape
    result = {}
    for name, values in scores.items():
        values = values.reshape(samples, N, T).astype(np.float64)  # a copy; accuracies are booleans
        values[:, ~test.has_truth] = np.nan
        if test.protocol.best_of_samples and name in HIGHER_IS_BETTER:
            sign = 1 if HIGHER_IS_BETTER[name] else -1
            values = sign * best_of_samples(sign * values, test.predicted)[None]
        result[name] = finite_mean(values.reshape(-1, T))
    return result


def finite_mean(values: np.ndarray) -> np.ndarray:
    """The mean over the first axis of the finite values (a frame predicted exactly has an infinite PSNR; frames
    past a video's end are NaN); NaN where none is finite."""
    finite = np.isfinite(values)
    counts = finite.sum(0)
    return np.where(counts > 0, np.where(finite, values, 0).sum(0) / np.maximum(counts, 1), np.nan)


# ---- baselines ----------------------------------------------------------------------------------------------------

def score_baselines(test: GroundTruth, dataset: VideoDataset, seed: int) -> dict[str, Scores]:
    """The scores of the baselines that show one frame throughout: ``last_frame`` (of the context) and
    ``random_frame`` (of the training split, drawn with ``seed``)."""
    result = {}
    for name, frame in baseline_frames(dataset, test.truth, test.context, seed).items():
        scores = dict(zip(("psnr", "ssim"), score_frames(frame, test.truth, test.protocol, test.device)))
        if test.lpips is not None:
            scores["lpips"] = still_lpips(frame, test)
        if test.accuracy is not None:
            readings = test.accuracy.still(frame, test.truth, test.context)
            scores[test.accuracy.name] = test.accuracy.correct(readings, test.labels)
        fvd = () if test.truth_features is None else windowed_fvd(
            test.windows, test.has_truth, still_clip_features(frame, test.windows, test.embedding()),
            test.truth_features, 1)
        result[name] = Scores(curves(scores, test, 1), *fvd)
    return result


def still_lpips(frame: np.ndarray, test: GroundTruth) -> np.ndarray:
    """LPIPS (N, T) of one frame per sequence (N, 1, C, 64, 64) uint8 against every true frame."""
    N, T = test.truth.shape[:2]
    step = max(1, LPIPS_PAIRS_PER_CALL // N)
    shown = torch.from_numpy(np.ascontiguousarray(frame))
    distances = []
    for start in range(0, T, step):
        truth = torch.from_numpy(test.truth[:, start:start + step])
        distances.append(test.lpips_of(shown.expand_as(truth), truth).numpy())
    return np.concatenate(distances, axis=1)


def ceiling(test: GroundTruth) -> np.ndarray | None:
    """The accuracy (T,) of the true frames where the labels come from the data (else it is 1 by construction)."""
    if test.accuracy is None or not test.labels_known:
        return None
    correct = test.accuracy.correct(test.accuracy.read(test.truth), test.labels)
    return curves({test.accuracy.name: correct}, test, 1)[test.accuracy.name]
