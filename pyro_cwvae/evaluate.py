"""The paper's evaluation of open-loop predictions (Section 3, "Evaluation"; Figure 5; Table 1) for several runs
side by side, as one dataset with a ``run`` dimension.

For every run, on the first ``sequences`` test videos: ``samples`` predictions of each video after ``context``
frames, drawn exactly as ``pyro-cwvae rollout`` draws them for the same seed (``interventions.sampled_trace``), then
decoded and scored a chunk of frames at a time (``predict.scored_chunks``). So the float predictions of all
frames never exist at once, and uint8 frames only for one FVD window. Per frame: SSIM and PSNR under the
protocol, LPIPS (AlexNet, v0.1), and the high-level accuracy of Figure 5 (Moving MNIST: the pair of digits a
classifier reads; GQN Mazes: the room-sequence category from colour histograms). FVD compares I3D features of
16-frame clips (the reference's clip length) per window of the horizon and over the whole horizon. The baselines
that repeat the last context frame or show a random training frame are scored alike, once for all runs. Per run
also the KL of each level per training sequence (Table 1) and, with ``particles`` > 0, the importance-weighted
bound beside the ELBO (``bounds.py``).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from .accel import resolve_device
from .bounds import FRAMES_PER_CALL, importance_weighted_bound
from .classifier import digit_classifier, digit_pair_accuracy, read_pairs, same_pairs
from .config import Config
from .data import VideoDataset
from .data.registry import open_dataset
from .errors import UserError
from .export import provenance, write_netcdf
from .fvd import frechet_distance, i3d_features
from .i3d import pretrained_i3d
from .interventions import Intervention, sampled_trace
from .lpips import lpips_distance, pretrained_lpips
from .metrics import PROTOCOLS, Protocol, best_of_samples, quantize
from .predict import (TrainedRun, baseline_frames, check_options, kl_table_variable, load_run,
                      read_test_frames, score_frames, scored_chunks, truth_kls, unit_frames)
from .rooms import colour_histograms, histogram_categories, room_categories

TITLE = "pyro-cwvae evaluation"
CLIP_FRAMES = 16
"""Frames of one FVD clip: the video length the reference FVD embeds with I3D."""
MIN_CLIP_FRAMES = 9
"""I3D's shortest input (``i3d.MIN_FRAMES``): a window shorter than a clip is one clip if it has this many."""
LPIPS_PAIRS_PER_CALL = 256
I3D_FRAMES_PER_CALL = 128
ACCURACY = {"mmnist": ("digit_accuracy", 1), "gqn": ("room_accuracy", 3)}
"""The high-level accuracy of Figure 5 for each dataset that has one, and the channels it reads."""
BASELINES = ("last_frame", "random_frame")


@dataclass
class Scorers:
    """The networks that score beyond PSNR and SSIM; each left None is the published (LPIPS, I3D) or cached
    (digit classifier) one, loaded when first needed. Tests give small stand-ins."""

    lpips: nn.Module | None = None
    i3d: nn.Module | None = None
    digits: nn.Module | None = None


@dataclass
class GroundTruth:
    """What every run is scored against: the true frames and what the scorers read from them."""

    truth: np.ndarray  # uint8 (N, T, C, 64, 64), zeros past a video's end
    has_truth: np.ndarray  # (N, T)
    context: int
    kl_frames: int  # frames every sequence has: the KL and the bounds use these
    protocol: Protocol
    windows: list[range]  # the FVD windows, in frames since the first context frame
    accuracy: str | None  # digit_accuracy, room_accuracy or None
    scorers: Scorers
    device: torch.device
    labels: torch.Tensor | None = None  # the true pair of digits (N, T, 2), or the true room category (N, T)
    labels_known: bool = False  # the digit pairs come from the generator, not from reading the true frames
    truth_features: list[np.ndarray] | None = None  # I3D features (N, clips, D) of each window's true clips

    @property
    def predicted(self) -> np.ndarray:
        """(N, T): frames predicted after the context that the test video has."""
        return self.has_truth & (np.arange(self.truth.shape[1]) >= self.context)


def evaluate(run_dirs: list[str | Path], dataset: VideoDataset | None = None, *, sequences: int = 100,
             context: int = 36, horizon: int | None = None, samples: int = 1, particles: int = 0,
             fvd_window: int = 100, protocol: str = "paper", perceptual: bool = True, seed: int = 0,
             device: str = "auto", data_dir: str | Path | None = None, scorers: Scorers | None = None,
             progress: bool = True) -> xr.Dataset:
    """Score the open-loop predictions of each run in ``run_dirs`` on the first ``sequences`` test videos of
    ``dataset`` (default: the runs' own, read from ``data_dir`` if given); ``horizon`` None predicts to the end
    of the test videos. ``perceptual`` False leaves out LPIPS and FVD (no published weights needed)."""
    check_evaluate_options(sequences, context, horizon, samples, particles, fvd_window, protocol)
    runs = named_runs(run_dirs)
    torch_device = resolve_device(device)
    trained = {name: load_run(path, torch_device) for name, path in runs.items()}  # each checkpoint read once
    configs = {name: run.cfg for name, run in trained.items()}
    check_same_data(configs)
    first = next(iter(configs.values()))
    dataset = dataset if dataset is not None else open_run_data(first, data_dir)
    test = ground_truth(dataset, first, sequences, context, horizon, fvd_window, PROTOCOLS[protocol], torch_device)
    for cfg in configs.values():
        check_options(cfg, dataset, test.truth.shape[1] - context, context, samples, sequences, 0)
    test.scorers = scoring_networks(scorers, torch_device, perceptual, test.accuracy, progress)

    bar = tqdm(total=1 + 3 * len(runs) + bool(particles) * len(runs), desc="evaluate", unit="stage",
               disable=not progress)
    bar.set_postfix_str("ground truth and baselines")
    read_truth(test, dataset)
    baselines = score_baselines(test, dataset, seed)
    bar.update()
    results = {name: score_run(name, run, test, samples, particles, seed, bar, progress)
               for name, run in trained.items()}
    bar.close()
    return to_dataset(results, configs, runs, baselines, test, dataset,
                      dict(samples=samples, particles=particles, seed=seed, fvd_window=fvd_window,
                           sequences=sequences, context=context, horizon=test.truth.shape[1] - context))


def check_evaluate_options(sequences: int, context: int, horizon: int | None, samples: int, particles: int,
                           fvd_window: int, protocol: str) -> None:
    """``UserError`` for options that cannot work whatever the runs."""
    if min(sequences, context, samples, fvd_window) < 1 or (horizon is not None and horizon < 1):
        raise UserError("--sequences, --context, --horizon, --samples and --fvd-window must each be at least 1")
    if particles < 0:
        raise UserError(f"--particles must be 0 (no bound) or more, got {particles}")
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r} is none of {', '.join(PROTOCOLS)}")


def named_runs(run_dirs: list[str | Path]) -> dict[str, Path]:
    """Each run directory under its folder name, or its path as given where two folders share a name."""
    if not run_dirs:
        raise UserError("name at least one run directory to evaluate")
    paths = [Path(run) for run in run_dirs]
    if len({path.resolve() for path in paths}) < len(paths):
        raise UserError("a run directory is named twice")
    clashes = Counter(path.name for path in paths)
    return {path.name if clashes[path.name] == 1 else str(path): path for path in paths}


def check_same_data(configs: dict[str, Config]) -> None:
    """``UserError`` unless every run was trained on the same data (dataset, speed of generated digits, channels):
    scores on different test sets cannot stand side by side."""
    data = {name: (cfg.dataset, cfg.speed, cfg.channels) for name, cfg in configs.items()}
    if len(set(data.values())) > 1:
        trained = ", ".join(f"{name}: {kind} (speed {speed:g}, {channels} channel(s))"
                            for name, (kind, speed, channels) in data.items())
        raise UserError(f"the runs were trained on different data and cannot be compared: {trained}")


def open_run_data(cfg: Config, data_dir: str | Path | None) -> VideoDataset:
    """The test data of ``cfg``'s dataset (generated Moving MNIST: the test videos of its data seed)."""
    return open_dataset(cfg.dataset, str(data_dir) if data_dir else cfg.data_dir, speed=cfg.speed, seed=cfg.seed)


def ground_truth(dataset: VideoDataset, cfg: Config, sequences: int, context: int, horizon: int | None,
                 fvd_window: int, protocol: Protocol, device: torch.device) -> GroundTruth:
    """The first frames of the test videos (to the end of the longest when ``horizon`` is None), scored with the
    accuracy of ``cfg``'s dataset."""
    total = None if horizon is None else context + horizon
    truth, has_truth, shortest = read_test_frames(dataset, sequences, total, context)
    if truth.shape[1] <= context:
        raise UserError(f"the test videos end within the --context of {context} frames: nothing to predict")
    windows = [range(start, min(start + fvd_window, truth.shape[1]))
               for start in range(context, truth.shape[1], fvd_window)]
    accuracy, channels = ACCURACY.get(cfg.dataset, (None, None))
    return GroundTruth(truth, has_truth, context, min(truth.shape[1], shortest), protocol, windows,
                       accuracy if dataset.channels == channels else None, Scorers(), device)


def scoring_networks(given: Scorers | None, device: torch.device, perceptual: bool, accuracy: str | None,
                     progress: bool) -> Scorers:
    """``given`` with the networks it lacks loaded on ``device``: LPIPS and I3D when ``perceptual`` (fetched
    once), the digit classifier for the digit accuracy (trained once); None where nothing needs one."""
    given = given or Scorers()
    lpips_net = (given.lpips or pretrained_lpips(device)) if perceptual else None
    i3d_net = (given.i3d or pretrained_i3d(device)) if perceptual else None
    needs_digits = accuracy == "digit_accuracy"
    digits = (given.digits or digit_classifier(str(device), say=print if progress else None)) if needs_digits else None
    return Scorers(lpips_net, i3d_net, digits)


# ---- what the scorers read from the true videos -------------------------------------------------------------------

def read_truth(test: GroundTruth, dataset: VideoDataset) -> None:
    """Fill in ``test.labels`` (digit pairs or room categories) and ``test.truth_features`` (I3D)."""
    if test.accuracy == "digit_accuracy":
        test.labels_known = hasattr(dataset, "test_labels")
        test.labels = true_pairs(test, dataset)
    elif test.accuracy == "room_accuracy":
        test.labels = torch.from_numpy(room_categories(test.truth))
    if test.scorers.i3d is not None:
        clips = WindowClips(test.windows, i3d_embedding(test))
        clips.add(0, test.truth)
        test.truth_features = clips.features


def true_pairs(test: GroundTruth, dataset: VideoDataset) -> torch.Tensor:
    """The pair of digits (N, T, 2) each true frame shows: the generator's labels where the dataset knows them,
    else the classifier's reading of the true frame (then the accuracy on true frames is 1 by construction)."""
    N, T = test.truth.shape[:2]
    if test.labels_known:
        labels = np.stack([dataset.test_labels(n) for n in range(N)])
        return torch.from_numpy(labels)[:, None].expand(N, T, 2)
    return read_pairs(test.scorers.digits, test.truth.reshape(N * T, *test.truth.shape[2:])).cpu().view(N, T, 2)


def i3d_embedding(test: GroundTruth) -> Callable[[np.ndarray], np.ndarray]:
    """Clips (M, L, C, 64, 64) uint8 -> their I3D features (M, D), batched on the test's device."""
    def embed(clips: np.ndarray) -> np.ndarray:
        features = i3d_features(torch.from_numpy(clips), test.scorers.i3d, I3D_FRAMES_PER_CALL, test.device)
        return features.cpu().numpy().astype(np.float64)

    return embed


# ---- FVD: I3D features of the clips of each window -----------------------------------------------------------------

def clip_layout(length: int) -> tuple[int, int]:
    """(clips, frames per clip) of a window of ``length`` frames: consecutive 16-frame clips from its start (a
    remainder left out), or the whole window as one clip when it is shorter than 16 but long enough for I3D."""
    if length >= CLIP_FRAMES:
        return length // CLIP_FRAMES, CLIP_FRAMES
    return (1, length) if length >= MIN_CLIP_FRAMES else (0, length)


def clip_features(frames: np.ndarray, embed: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Features (rows, clips, D) of the clips of one window's frames (rows, length, C, 64, 64)."""
    rows, length = frames.shape[:2]
    clips, frames_per_clip = clip_layout(length)
    if clips == 0:
        return np.zeros((rows, 0, 0))
    videos = frames[:, :clips * frames_per_clip].reshape(rows * clips, frames_per_clip, *frames.shape[2:])
    return embed(videos).reshape(rows, clips, -1)


def clip_has_truth(test: GroundTruth, window: range) -> np.ndarray:
    """(N, clips): whether each sequence's test video reaches the last frame of each clip of ``window``."""
    clips, frames_per_clip = clip_layout(len(window))
    ends = window.start + frames_per_clip * np.arange(1, clips + 1) - 1
    return test.has_truth[:, ends]


class WindowClips:
    """I3D features of the clips of each FVD window, for videos whose frames arrive a chunk of time at a time:
    a window's clips are embedded as soon as its last frame arrives, and its frames then let go."""

    def __init__(self, windows: list[range], embed: Callable[[np.ndarray], np.ndarray]):
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


def fvd_scores(test: GroundTruth, features: list[np.ndarray], samples: int) -> tuple[np.ndarray, float]:
    """FVD of each window and over the whole horizon between the clips of ``features`` (per window: rows
    samples x N, sample-major) and the true clips; clips past a test video's end are left out."""
    per_window, predicted_all, true_all = [], [], []
    for window, predicted, true in zip(test.windows, features, test.truth_features):
        valid = clip_has_truth(test, window)
        predicted, true = predicted[np.tile(valid, (samples, 1))], true[valid]
        per_window.append(frechet_or_nan(predicted, true))
        if valid.size:  # a window too short for a clip has none
            predicted_all.append(predicted)
            true_all.append(true)
    if not predicted_all:
        return np.array(per_window), float("nan")
    return np.array(per_window), frechet_or_nan(np.concatenate(predicted_all), np.concatenate(true_all))


# ---- one run ----------------------------------------------------------------------------------------------------

def score_run(name: str, run: TrainedRun, test: GroundTruth, samples: int, particles: int, seed: int, bar: tqdm,
              progress: bool) -> dict:
    """Every number of one run: per-time curves, FVD, the Table 1 KL and, with ``particles``, the bounds."""
    bar.set_postfix_str(f"{name}: predicting {samples} x {test.truth.shape[0]} sequences")
    states = predicted_states(run, test, samples, seed)
    bar.update()
    bar.set_postfix_str(f"{name}: decoding and scoring")
    scores, features = score_predictions(run, states, test, progress)
    del states
    result = curves(scores, test, samples)
    if features is not None:
        result["fvd"], result["fvd_horizon"] = fvd_scores(test, features, samples)
    bar.update()
    bar.set_postfix_str(f"{name}: per-level KL")
    result["kl_table"] = kl_table_variable(truth_kls(run, test.truth, test.kl_frames, test.device),
                                           test.kl_frames, run.cfg.seq_len)
    result["checkpoint_step"] = run.step
    bar.update()
    if particles:
        bar.set_postfix_str(f"{name}: importance-weighted bound, {particles} particles")
        result["iwae"], result["elbo"] = bounds(run, test, particles)
        bar.update()
    return result


def predicted_states(run: TrainedRun, test: GroundTruth, samples: int, seed: int) -> torch.Tensor:
    """The level-1 states (samples x N, T, state) of the predictions, drawn as ``pyro-cwvae rollout`` draws them
    for ``seed`` with no intervention."""
    trace = sampled_trace(run, test.truth, test.context, samples, Intervention(), seed)
    return trace.nodes["_RETURN"]["value"]


def score_predictions(run: TrainedRun, states: torch.Tensor, test: GroundTruth, progress: bool
                      ) -> tuple[dict[str, np.ndarray], list[np.ndarray] | None]:
    """Per frame scores (samples x N, T) of the predictions decoded from ``states``, and the I3D features of
    their clips per FVD window, all from one pass over chunks of frames."""
    B, T = states.shape[:2]
    scores = {name: np.full((B, T), np.nan) for name in frame_metrics(test)}
    clips = WindowClips(test.windows, i3d_embedding(test)) if test.scorers.i3d is not None else None
    histograms = None
    for chunk in scored_chunks(run, states, test.truth, test.protocol, progress):
        t = chunk.frames
        scores["psnr"][:, t], scores["ssim"][:, t] = chunk.psnr.cpu().numpy(), chunk.ssim.cpu().numpy()
        pixels = quantize(chunk.means)  # the saved uint8 frames: what a viewer, the classifier and I3D see
        if test.scorers.lpips is not None:
            scores["lpips"][:, t] = lpips_of(chunk.scored, chunk.truth, test).numpy()
        if test.accuracy == "digit_accuracy":
            scores["digit_accuracy"][:, t] = digits_correct(pixels, test, t, B)
        elif test.accuracy == "room_accuracy":
            histograms = room_histograms(histograms, pixels, t, T)
        if clips is not None:
            clips.add(t.start, pixels.cpu().numpy())
    if histograms is not None:
        scores["room_accuracy"] = rooms_correct(histograms, test)
    return scores, clips.features if clips is not None else None


def frame_metrics(test: GroundTruth) -> list[str]:
    """The per-frame scores this test set has."""
    names = ["psnr", "ssim"] + ["lpips"] * (test.scorers.lpips is not None)
    return names + [test.accuracy] * (test.accuracy is not None)


def lpips_of(frames: torch.Tensor, truth: torch.Tensor, test: GroundTruth) -> torch.Tensor:
    """LPIPS (...) of frames against truth, both (..., C, 64, 64) in [0, 1] (clipped), on the CPU."""
    return lpips_distance(frames, truth, test.scorers.lpips, LPIPS_PAIRS_PER_CALL, test.device).cpu()


def digits_correct(pixels: torch.Tensor, test: GroundTruth, frames: slice, rows: int) -> np.ndarray:
    """Whether each uint8 frame (B, n, 1, 64, 64) shows its sequence's true pair of digits: (B, n)."""
    labels = test.labels[:, frames].repeat(rows // test.labels.shape[0], 1, 1)
    return digit_pair_accuracy(pixels, labels, test.scorers.digits)


def room_histograms(histograms: np.ndarray | None, pixels: torch.Tensor, frames: slice, total: int) -> np.ndarray:
    """``histograms`` (B, T, K) with the colour histograms of the uint8 frames (B, n, 3, 64, 64) filled in."""
    chunk = colour_histograms(pixels.cpu().numpy())
    if histograms is None:
        histograms = np.zeros((chunk.shape[0], total, chunk.shape[-1]))
    histograms[:, frames] = chunk
    return histograms


def rooms_correct(histograms: np.ndarray, test: GroundTruth) -> np.ndarray:
    """Whether the room-sequence category of frames 0..t of each prediction equals the true one: (B, T)."""
    true = test.labels.numpy()
    return histogram_categories(histograms) == np.tile(true, (len(histograms) // len(true), 1))


def bounds(run: TrainedRun, test: GroundTruth, particles: int) -> tuple[np.ndarray, np.ndarray]:
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


# ---- from per-frame scores to curves ----------------------------------------------------------------------------

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
"""The metrics a best-of-N protocol picks a sample for (the accuracies are means over samples)."""


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

def score_baselines(test: GroundTruth, dataset: VideoDataset, seed: int) -> dict[str, np.ndarray | float]:
    """The curves (T,) and FVD of the baselines that show one frame throughout: the last context frame, and a
    random training frame; plus the accuracy of the true frames (the ceiling) under ``<accuracy>_truth``."""
    result = {}
    accuracy = test.accuracy
    for name, frame in baseline_frames(dataset, test.truth, test.context, seed).items():
        scores = dict(zip(("psnr", "ssim"), score_frames(frame, test.truth, test.protocol, test.device)))
        if test.scorers.lpips is not None:
            scores["lpips"] = baseline_lpips(frame, test)
        if accuracy is not None:
            scores[accuracy] = baseline_correct(frame, test)
        result.update({f"{metric}_{name}": curve for metric, curve in curves(scores, test, 1).items()})
        if test.truth_features is not None:
            result[f"fvd_{name}"], result[f"fvd_horizon_{name}"] = fvd_scores(test, static_features(frame, test), 1)
    if accuracy == "digit_accuracy" and test.labels_known:
        result["digit_accuracy_truth"] = curves({accuracy: truth_digits_correct(test)}, test, 1)[accuracy]
    return result


def baseline_lpips(frame: np.ndarray, test: GroundTruth) -> np.ndarray:
    """LPIPS (N, T) of one frame per sequence (N, 1, C, 64, 64) uint8 against every true frame."""
    N, T = test.truth.shape[:2]
    step = max(1, LPIPS_PAIRS_PER_CALL // N)
    shown = torch.from_numpy(np.ascontiguousarray(frame))
    distances = []
    for start in range(0, T, step):
        truth = torch.from_numpy(test.truth[:, start:start + step])
        distances.append(lpips_of(shown.expand_as(truth), truth, test).numpy())
    return np.concatenate(distances, axis=1)


def baseline_correct(frame: np.ndarray, test: GroundTruth) -> np.ndarray:
    """The high-level accuracy (N, T) of showing one frame per sequence (N, 1, C, 64, 64) throughout."""
    if test.accuracy == "digit_accuracy":
        read = read_pairs(test.scorers.digits, frame[:, 0]).cpu()
        return same_pairs(read[:, None], test.labels).numpy()
    T = test.truth.shape[1]
    shown = np.concatenate([test.truth[:, :test.context], np.repeat(frame, T - test.context, axis=1)], axis=1)
    return histogram_categories(colour_histograms(shown)) == test.labels.numpy()


def truth_digits_correct(test: GroundTruth) -> np.ndarray:
    """Whether the classifier reads the true pair in each true frame (N, T): the ceiling of the digit accuracy."""
    return digit_pair_accuracy(test.truth, test.labels, test.scorers.digits)


def static_features(frame: np.ndarray, test: GroundTruth) -> list[np.ndarray]:
    """Per FVD window the I3D features (N, clips, D) of clips that show one frame per sequence throughout; a
    still clip looks the same in every window, so each clip length is embedded once."""
    embed, by_length = i3d_embedding(test), {}
    features = []
    for window in test.windows:
        clips, frames_per_clip = clip_layout(len(window))
        if frames_per_clip not in by_length and clips:
            by_length[frames_per_clip] = embed(np.repeat(frame, frames_per_clip, axis=1))
        still = by_length.get(frames_per_clip, np.zeros((len(frame), 0)))
        features.append(np.repeat(still[:, None], clips, axis=1))
    return features


# ---- the dataset ------------------------------------------------------------------------------------------------

LONG_NAMES = {
    "psnr": ("PSNR", "dB"),
    "ssim": ("SSIM", "1"),
    "lpips": ("LPIPS (AlexNet, v0.1; lower is better)", "1"),
    "digit_accuracy": ("share of frames whose pair of digits the classifier reads as the true pair", "1"),
    "room_accuracy": ("share of videos whose room-sequence category up to this frame is the true one", "1"),
}


FRAMES = {
    "lpips": "the frames the protocol scores, clipped to [0, 1]; truth uint8 / 255",
    "digit_accuracy": "the saved uint8 frames (means clamped to [0, 1], rounded)",
    "room_accuracy": "the saved uint8 frames (means clamped to [0, 1], rounded), the context's reconstructions first",
}
"""What each metric reads, where it is not the protocol's frames."""


def how_aggregated(name: str, protocol: Protocol, samples: int) -> str:
    """How the per-frame scores of ``name`` became one curve."""
    if protocol.best_of_samples and name in HIGHER_IS_BETTER:
        best = "highest" if HIGHER_IS_BETTER[name] else "lowest"
        return (f"per sequence the best of {samples} sample(s) ({best} mean over the predicted frames), "
                "mean over sequences")
    return f"mean over {samples} sample(s) and the sequences"


def curve_variables(results: dict[str, dict], baselines: dict, test: GroundTruth, samples: int) -> dict[str, tuple]:
    """The per-time variables: each metric per run, each baseline, and the classifier's ceiling."""
    variables = {}
    conventions = test.protocol.conventions()
    for name in frame_metrics(test):
        long_name, units = LONG_NAMES[name]
        attrs = {"long_name": long_name, "units": units, "aggregation": how_aggregated(name, test.protocol, samples),
                 "protocol": test.protocol.name, "frames": FRAMES.get(name, conventions["frames"])}
        if name in conventions:
            attrs["convention"] = conventions[name]
        if name == "digit_accuracy":
            attrs["labels"] = ("the digits the generator drew" if test.labels_known else
                               "the classifier's reading of the true frame at the same time")
        variables[name] = (("run", "time"), np.stack([r[name] for r in results.values()]).astype(np.float32), attrs)
        for baseline in BASELINES:
            variables[f"{name}_{baseline}"] = (("time",), baselines[f"{name}_{baseline}"].astype(np.float32), {
                "long_name": f"{long_name}: repeating the {baseline.replace('_', ' ')}"
                             f"{' of the context' if baseline == 'last_frame' else ' of the training split'}",
                "units": units, "aggregation": "mean over sequences"})
    if "digit_accuracy_truth" in baselines:
        variables["digit_accuracy_truth"] = (("time",), baselines["digit_accuracy_truth"].astype(np.float32), {
            "long_name": "share of true frames the classifier reads as the true pair: the ceiling of digit_accuracy",
            "units": "1"})
    return variables


def fvd_variables(results: dict[str, dict], baselines: dict, test: GroundTruth) -> dict[str, tuple]:
    """FVD per window and over the horizon, per run and for the baselines."""
    if test.truth_features is None:
        return {}
    how = (f"Frechet distance of I3D (Kinetics-400) features of {CLIP_FRAMES}-frame clips, every sample's "
           "predictions against the true clips; frames resized to 224x224 as the reference FVD")
    attrs = {"units": "1", "clip_frames": CLIP_FRAMES, "method": how}
    variables = {
        "fvd": (("run", "window"), np.stack([r["fvd"] for r in results.values()]).astype(np.float32),
                {**attrs, "long_name": "FVD of the clips in each window of the horizon (lower is better)"}),
        "fvd_horizon": (("run",), np.array([r["fvd_horizon"] for r in results.values()], dtype=np.float32),
                        {**attrs, "long_name": "FVD of all clips of the horizon"}),
    }
    for baseline in BASELINES:
        variables[f"fvd_{baseline}"] = (("window",), baselines[f"fvd_{baseline}"].astype(np.float32),
                                        {**attrs, "long_name": f"FVD per window: the {baseline.replace('_', ' ')}"})
        variables[f"fvd_horizon_{baseline}"] = ((), np.float32(baselines[f"fvd_horizon_{baseline}"]),
                                                {**attrs, "long_name": f"FVD over the horizon: the "
                                                                       f"{baseline.replace('_', ' ')}"})
    return variables


def kl_variable(results: dict[str, dict], levels: int) -> tuple:
    """``kl_table(run, level)``: Table 1's quantity of each run, NaN for levels a run lacks."""
    table = np.full((len(results), levels), np.nan, dtype=np.float32)
    for row, result in enumerate(results.values()):
        values = result["kl_table"][1]
        table[row, :len(values)] = values
    attrs = dict(next(iter(results.values()))["kl_table"][2])
    attrs["long_name"] += "; NaN for levels a run lacks"
    return ("run", "level"), table, attrs


def bound_variables(results: dict[str, dict], test: GroundTruth, particles: int) -> dict[str, tuple]:
    """``iwae`` and ``elbo`` (run, sequence) in nats per frame, when the bounds were computed."""
    if not particles:
        return {}
    frames = f"nats per frame of the first {test.kl_frames} frames of each test video; higher is better"
    return {
        "iwae": (("run", "sequence"), np.stack([r["iwae"] for r in results.values()]).astype(np.float32),
                 {"long_name": f"importance-weighted bound IWAE_{particles} on log p(x)", "units": frames,
                  "particles": particles}),
        "elbo": (("run", "sequence"), np.stack([r["elbo"] for r in results.values()]).astype(np.float32),
                 {"long_name": f"ELBO from the same {particles} draws of the guide", "units": frames,
                  "particles": particles}),
    }


def to_dataset(results: dict[str, dict], configs: dict[str, Config], runs: dict[str, Path], baselines: dict,
               test: GroundTruth, dataset: VideoDataset, options: dict) -> xr.Dataset:
    """All numbers as named arrays, with the runs' configs, the protocol and versions in the attributes."""
    N, T = test.has_truth.shape
    levels = max(cfg.levels for cfg in configs.values())
    ds = xr.Dataset(
        {
            **curve_variables(results, baselines, test, options["samples"]),
            **fvd_variables(results, baselines, test),
            "kl_table": kl_variable(results, levels),
            **bound_variables(results, test, options["particles"]),
            "checkpoint_step": ("run", np.array([r["checkpoint_step"] for r in results.values()])),
            "is_context": ("time", np.arange(T) < test.context, {"long_name": "frame was given to the guide"}),
            "has_truth": (("sequence", "time"), test.has_truth, {"long_name": "the test video reaches this frame"}),
        },
        coords={
            "run": list(results), "time": np.arange(T), "level": np.arange(1, levels + 1),
            "sequence": np.arange(N), "window": np.arange(len(test.windows)),
            "window_start": ("window", np.array([w.start for w in test.windows])),
            "window_stop": ("window", np.array([w.stop for w in test.windows])),
            "run_dir": ("run", [str(path) for path in runs.values()]),
        },
        attrs={
            **provenance(TITLE),
            "dataset": dataset.name,
            "configs": json.dumps({name: cfg.to_dict() for name, cfg in configs.items()}),
            **options,
            "protocol": test.protocol.name,
            **{f"protocol_{key}": line for key, line in test.protocol.conventions().items()},
            "perceptual": int(test.scorers.lpips is not None),
        },
    )
    ds["time"].attrs.update(units="frames", long_name="frames since the first context frame")
    ds["window_start"].attrs.update(units="frames", long_name="first frame of the FVD window")
    ds["window_stop"].attrs.update(units="frames", long_name="frame after the last of the FVD window")
    ds["level"].attrs.update(long_name="level of the hierarchy (1 is the fastest)")
    return ds


def write_evaluation(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as NetCDF, atomically."""
    return write_netcdf(ds, path)


def summary(ds: xr.Dataset) -> str:
    """One line per run: its curves averaged over the predicted frames, FVD over the horizon, the Table 1 KL and
    the bounds, beside the baselines."""
    predicted = ~ds.is_context
    metrics = [name for name in ("psnr", "ssim", "lpips", "digit_accuracy", "room_accuracy") if name in ds]

    def line(label: str, values: Callable[[str], xr.DataArray], fvd: float | None) -> str:
        parts = [f"{name} {float(values(name).where(predicted).mean()):.3f}" for name in metrics]
        return f"{label}: " + ", ".join(parts + ([f"fvd {fvd:.1f}"] if fvd is not None else []))

    lines = []
    for run in ds.run.values:
        text = line(str(run), lambda name: ds[name].sel(run=run),
                    float(ds.fvd_horizon.sel(run=run)) if "fvd_horizon" in ds else None)
        kl = ", ".join(f"{v:.1f}" for v in ds.kl_table.sel(run=run).values if np.isfinite(v))
        text += f"; KL per level (nats per training sequence) {kl}"
        if "iwae" in ds:
            text += (f"; IWAE_{ds.iwae.attrs['particles']} {float(ds.iwae.sel(run=run).mean()):.2f} >= "
                     f"ELBO {float(ds.elbo.sel(run=run).mean()):.2f} nats/frame")
        lines.append(text)
    for baseline in BASELINES:
        lines.append(line(baseline.replace("_", " "), lambda name: ds[f"{name}_{baseline}"],
                          float(ds[f"fvd_horizon_{baseline}"]) if "fvd_horizon" in ds else None))
    if "digit_accuracy_truth" in ds:
        lines.append(f"classifier on true frames (ceiling): {float(ds.digit_accuracy_truth.mean()):.3f}")
    return "\n".join(lines)
