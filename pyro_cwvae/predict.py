"""Open-loop rollouts (paper Section 3, "Evaluation") and per-level KLs (Sections 3.8-3.9) of a trained run.

The guide filters the first ``context`` frames (each level the steps whose window of frames lies wholly inside
the context, as the official code does; the others are drawn from the prior); the model then runs over context +
horizon frames with those latents replayed and every later latent drawn from its prior, so no frame after the
context can reach a prediction. Everything is done with the run's own model and guide programs through
``poutine.trace`` / ``poutine.replay`` / ``poutine.escape``, so a variant a user trained is rolled out as written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import xarray as xr
from pyro import poutine
from pyro.poutine.runtime import NonlocalExit
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from .accel import resolve_device
from .checkpoint import load_checkpoint, restore_nets
from .clock import Clock
from .config import Config
from .data import VideoDataset
from .elbo import level_of
from .metrics import PROTOCOLS, Protocol, best_of_samples, quantize
from .nets import CWVAENets
from .errors import UserError
from .export import provenance, write_netcdf
from .programs import check_programs_match, load_programs

DECODE_CHUNK = 256  # frames decoded per call: memory stays flat whatever the horizon
KL_FRAMES_PER_CALL = 2048  # frames the guide filters at once for the KL: memory stays flat whatever the test set


@dataclass
class TrainedRun:
    cfg: Config
    nets: CWVAENets
    model: callable
    guide: callable
    step: int


def load_run(run_dir: str | Path, device: torch.device) -> TrainedRun:
    """The networks and programs of a run's checkpoint, ready for evaluation."""
    state = load_checkpoint(Path(run_dir), map_location=device)
    cfg = Config.from_dict(state["config"])
    programs = load_programs(cfg.model, cfg.guide)
    check_programs_match(state, programs)
    nets = CWVAENets(cfg).to(device)
    restore_nets(nets, state)
    nets.eval()
    return TrainedRun(cfg, nets, programs[0].fn, programs[1].fn, state["step"])


def filtered_steps(cfg: Config, level: int, context_frames: int, prior_levels: int) -> int:
    """Steps of ``level`` whose posterior filters the context: those whose window of k**(l-1) frames lies wholly
    inside it, floor(context / k**(l-1)) as in the official ``open_loop_unroll``; none for the top ``prior_levels``."""
    if level > cfg.levels - prior_levels:
        return 0
    return context_frames // cfg.clock.period(level)


def trace_until(fn, decided: poutine.Trace, wanted: set[str], *args, **kwargs) -> poutine.Trace:
    """Trace of ``fn`` replayed on ``decided``, stopped at the first latent site neither decided nor ``wanted``.

    Stopping there means the sites below are neither computed nor drawn: each pass consumes noise only for the
    sites it keeps.
    """
    def undecided(msg) -> bool:
        return level_of(msg["name"]) is not None and msg["name"] not in decided and msg["name"] not in wanted

    tracer = poutine.trace(poutine.escape(poutine.replay(fn, trace=decided), escape_fn=undecided))
    try:
        tracer(*args, **kwargs)
    except NonlocalExit:
        pass  # the rest of the program is not needed
    return tracer.trace


def keep(decided: poutine.Trace, trace: poutine.Trace, names: set[str]) -> None:
    """Add the sites ``names`` of ``trace`` to ``decided``."""
    for name in names:
        decided.add_node(name, **trace.nodes[name])


def context_latents(run: TrainedRun, context: torch.Tensor, prior_levels: int = 0) -> poutine.Trace:
    """The latent sites of the context frames (B, C_T, C, 64, 64), decided level by level from the top.

    Level l filters the context with the guide for its ``filtered_steps``; its other context steps (a window only
    partly inside the context, or a level among the top ``prior_levels``) are drawn from the model's prior. The
    levels below then filter their frames conditioned on those draws. Our clock keeps eq. 1's alignment (step i of
    level l conditions steps i*k .. i*k + k-1 of the level below) for any context; the official code only accepts
    contexts that are multiples of k**(L-1) (``tools.validate_config``), and its tiling of the level above would
    misalign the lower levels otherwise.

    Noise is drawn in this order: for l = L .. 1, the filtered steps of level l in time order, then its steps from
    the prior in time order.
    """
    if prior_levels == 0 and context.shape[1] % run.cfg.clock.top_period == 0:  # every step filters: one pass
        return poutine.trace(run.guide).get_trace(context, run.nets, run.cfg)
    return latents_level_by_level(run, context, prior_levels)


def latents_level_by_level(run: TrainedRun, context: torch.Tensor, prior_levels: int,
                           given: poutine.Trace | None = None) -> poutine.Trace:
    """``context_latents`` in general: per level a guide pass for its filtered steps and a model pass for the rest,
    each replayed on the levels above and stopped before the levels below. Sites in ``given`` (an intervention's)
    are kept as they are, and the others are decided conditioned on them."""
    cfg, clock = run.cfg, run.cfg.clock
    B, T = context.shape[:2]
    decided = poutine.Trace() if given is None else given.copy()
    for level in range(cfg.levels, 0, -1):
        sites = [clock.site_name(level, frame) for frame in clock.active_frames(level, T)]
        filtered = set(sites[:filtered_steps(cfg, level, T, prior_levels)]) - set(decided.nodes)
        from_prior = set(sites) - filtered - set(decided.nodes)
        if filtered:  # q(s_t^l | s_{t-1}^l, s_t^{l+1}, e_t^l) on fully observed windows
            keep(decided, trace_until(run.guide, decided, filtered, context, run.nets, cfg), filtered)
        if from_prior:  # p(s_t^l | s_{t-1}^l, s_t^{l+1})
            keep(decided, trace_until(run.model, decided, from_prior, None, run.nets, cfg, num_frames=T,
                                      batch_size=B), from_prior)
    return decided


@torch.no_grad()
def open_loop_states(run: TrainedRun, context: torch.Tensor, num_frames: int, prior_levels: int = 0) -> torch.Tensor:
    """Level-1 states (B, num_frames, state) given only the ``context`` frames (B, C_T, C, 64, 64).

    The context's latents come from ``context_latents``; the model then runs over all ``num_frames`` frames with
    them replayed and every later latent drawn from its prior (top level first), so no frame after the context
    can reach a prediction. With ``prior_levels`` N > 0 the top N levels ignore the context (paper Section 3.6,
    Figure 7).
    """
    with run.nets.sharing_deterministic_path():  # the passes reuse each other's GRU steps
        decided = context_latents(run, context, prior_levels)
        return poutine.replay(run.model, trace=decided)(None, run.nets, run.cfg, num_frames=num_frames,
                                                        batch_size=context.shape[0])


def decoded_chunks(run: TrainedRun, states: torch.Tensor, progress: bool = False
                   ) -> Iterator[tuple[slice, torch.Tensor]]:
    """The decoder's float means (B, n, C, 64, 64) of consecutive chunks of the frames of ``states`` (B, T, state),
    each with its slice of time: memory stays flat whatever the horizon."""
    B, T = states.shape[:2]
    step = max(1, DECODE_CHUNK // B)
    for start in tqdm(range(0, T, step), desc="decoding", unit="chunk", disable=not progress, leave=False):
        yield slice(start, start + step), run.nets.decoder(states[:, start:start + step])


@torch.no_grad()
def decode(run: TrainedRun, states: torch.Tensor, progress: bool = False) -> np.ndarray:
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
def scored_chunks(run: TrainedRun, states: torch.Tensor, truth: np.ndarray, protocol: Protocol,
                  progress: bool = False) -> Iterator[ScoredChunk]:
    """The frames of ``states`` (B, T, state) decoded and scored under ``protocol`` a chunk at a time, so the
    float means of all frames never exist at once.

    ``truth`` (N, T, C, 64, 64) uint8 is shared by the B = samples x N rows of ``states`` (sample-major).
    """
    B = states.shape[0]
    for frames, means in decoded_chunks(run, states, progress):
        true = unit_frames(truth[:, frames], means.device).repeat(B // truth.shape[0], 1, 1, 1, 1)
        scored = protocol.frames(means)
        yield ScoredChunk(frames, means, scored, true, *protocol.score(scored, true))


def decode_and_score(run: TrainedRun, states: torch.Tensor, truth: np.ndarray, protocol: Protocol,
                     progress: bool = False, pixels=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``decode`` and the PSNR and SSIM (B, T) of each frame under ``protocol`` (``scored_chunks``); the spread
    over samples of each chunk goes to ``pixels`` (an ``interventions.PixelSpread``) if given."""
    B, T = states.shape[:2]
    out = np.empty((B, T, run.cfg.channels, 64, 64), dtype=np.uint8)
    psnr_, ssim_ = np.empty((B, T)), np.empty((B, T))
    for chunk in scored_chunks(run, states, truth, protocol, progress):
        out[:, chunk.frames] = quantize(chunk.means).cpu().numpy()
        if pixels is not None:
            pixels.add(chunk.frames, chunk.means)
        psnr_[:, chunk.frames], ssim_[:, chunk.frames] = chunk.psnr.cpu().numpy(), chunk.ssim.cpu().numpy()
    return out, psnr_, ssim_


def unit_frames(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 frames as floats in [0, 1] on ``device``."""
    return torch.from_numpy(np.require(frames, requirements=["C", "W"])).to(device).float().div_(255)  # copies views


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


@torch.no_grad()
def level_kls(run: TrainedRun, video: torch.Tensor) -> np.ndarray:
    """KL[q || p] in nats of every active step of every level: (B, L, T), NaN where a level is inactive."""
    B, T = video.shape[:2]
    with run.nets.sharing_deterministic_path():
        guide_trace = poutine.trace(run.guide).get_trace(video, run.nets, run.cfg)
        model_trace = poutine.trace(poutine.replay(run.model, trace=guide_trace)).get_trace(
            None, run.nets, run.cfg, num_frames=T, batch_size=B)
    kl = np.full((B, run.cfg.levels, T), np.nan, dtype=np.float32)
    for name, site in guide_trace.nodes.items():
        parsed = Clock.parse_site(name)
        if parsed is None or site["type"] != "sample":
            continue
        level, frame = parsed
        kl[:, level - 1, frame] = kl_divergence(site["fn"], model_trace.nodes[name]["fn"]).cpu().numpy()
    return kl


def truth_kls(run: TrainedRun, truth: np.ndarray, frames: int, device: torch.device) -> np.ndarray:
    """``level_kls`` of the first ``frames`` frames of the uint8 ``truth`` (N, T, C, 64, 64): (N, L, T), NaN from
    ``frames`` on. A group of sequences at a time, so the guide's activations stay bounded whatever N."""
    N, T = truth.shape[:2]
    kl = np.full((N, run.cfg.levels, T), np.nan, dtype=np.float32)
    group = max(1, KL_FRAMES_PER_CALL // frames)
    for start in range(0, N, group):
        rows = slice(start, start + group)
        kl[rows, :, :frames] = level_kls(run, unit_frames(truth[rows, :frames], device))
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


def check_options(cfg: Config, dataset: VideoDataset, horizon: int, context: int, samples: int, sequences: int,
                  prior_levels: int) -> None:
    """``UserError`` for options that cannot work with this run and data."""
    if horizon < 1 or context < 1 or samples < 1 or sequences < 1:
        raise UserError("--horizon, --context, --samples and --sequences must each be at least 1")
    if not 0 <= prior_levels <= cfg.levels:
        raise UserError(f"--prior-levels {prior_levels} must lie between 0 and the run's {cfg.levels} levels")
    if dataset.channels != cfg.channels:
        raise UserError(f"the {dataset.name} data has {dataset.channels} channel(s) but the run was trained on "
                        f"{cfg.channels}")


def read_test_frames(dataset: VideoDataset, sequences: int, total: int | None, context: int
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """The first ``total`` frames of the first test videos, uint8 (N, total, C, 64, 64) with zeros past a video's
    end, the mask of frames each video has, and the length of the shortest video (which must hold the context).
    ``total`` None: to the end of the longest video."""
    videos = dataset.test_videos(sequences)
    shortest = min(len(v) for v in videos)
    total = max(len(v) for v in videos) if total is None else total
    if context > shortest:
        raise UserError(f"--context {context} is longer than the shortest of the {sequences} test videos "
                        f"({shortest} frames)")
    truth = np.zeros((sequences, total, dataset.channels, 64, 64), dtype=np.uint8)
    has_truth = np.zeros((sequences, total), dtype=bool)
    for n, v in enumerate(videos):
        truth[n, :len(v[:total])] = v[:total]
        has_truth[n, :len(v[:total])] = True
    return truth, has_truth, shortest


def rollout(run_dir: str | Path | TrainedRun, dataset: VideoDataset, *, horizon: int, context: int | None = None,
            samples: int = 3, sequences: int = 8, seed: int = 0, device: str = "auto", prior_levels: int = 0,
            swap_levels: int | None = None, from_sequence: int | None = None, fix_level: int | None = None,
            protocol: str = "paper", progress: bool = True) -> xr.Dataset:
    """Predict ``horizon`` frames after ``context`` frames of the first ``sequences`` test videos, scored under
    the evaluation ``protocol`` (``metrics.PROTOCOLS``: "paper" or "standard"), with the spread over samples and
    under the level interventions ``prior_levels``, ``swap_levels`` / ``from_sequence`` and ``fix_level``
    (``interventions.Intervention``). ``run_dir`` may be a run loaded already (``device`` is then its own)."""
    from .interventions import Intervention, PixelSpread, sampled_trace, spread_variables  # imports this module

    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r} is none of {', '.join(PROTOCOLS)}")
    scoring = PROTOCOLS[protocol]
    run = run_dir if isinstance(run_dir, TrainedRun) else load_run(run_dir, resolve_device(device))
    torch_device = next(run.nets.parameters()).device
    cfg = run.cfg
    context = cfg.context if context is None else context
    check_options(cfg, dataset, horizon, context, samples, sequences, prior_levels)
    intervention = Intervention(prior_levels, swap_levels, from_sequence, fix_level)
    intervention.check(cfg.levels, sequences)
    total = context + horizon
    truth, has_truth, shortest = read_test_frames(dataset, sequences, total, context)

    bar = tqdm(total=4, desc="rollout", disable=not progress, unit="stage")
    bar.set_postfix_str(f"filtering {context} frames, predicting {horizon}")
    trace = sampled_trace(run, truth, context, samples, intervention, seed)
    bar.update()
    bar.set_postfix_str(f"decoding, {protocol} metrics")
    pixels = PixelSpread(samples, sequences, total, cfg.channels)
    prediction, psnr_, ssim_ = decode_and_score(run, trace.nodes["_RETURN"]["value"], truth, scoring, progress,
                                                pixels)
    prediction = prediction.reshape(samples, sequences, total, cfg.channels, 64, 64)
    scores = {"psnr": psnr_.reshape(samples, sequences, total), "ssim": ssim_.reshape(samples, sequences, total)}
    bar.update()

    bar.set_postfix_str("baselines")
    for name, frames in baseline_frames(dataset, truth, context, seed).items():
        scores[f"psnr_{name}"], scores[f"ssim_{name}"] = score_frames(frames, truth, scoring, torch_device)
    bar.update()

    bar.set_postfix_str("per-level KL")
    kl_frames = min(total, shortest)  # the KL needs the true frames of every sequence
    kl = truth_kls(run, truth, kl_frames, torch_device)
    bar.update()
    bar.close()

    for score in scores.values():
        score[..., ~has_truth] = np.nan
    predicted = has_truth & (np.arange(total) >= context)
    for metric in ("psnr", "ssim"):
        scores[f"{metric}_best"] = best_of_samples(scores[metric], predicted)
    kl_table = kl_table_variable(kl, kl_frames, cfg.seq_len)
    ds = to_dataset(run, prediction=prediction, truth=truth, has_truth=has_truth, context=context, horizon=horizon,
                    scores=scores, kl=kl, kl_table=kl_table, protocol=scoring, seed=seed, prior_levels=prior_levels)
    ds = ds.assign(spread_variables(trace, pixels, cfg.levels))
    ds.attrs.update(intervention.attrs())
    return ds


def baseline_frames(dataset: VideoDataset, truth: np.ndarray, context: int, seed: int) -> dict[str, np.ndarray]:
    """The frame each baseline shows at every time, uint8 (N, 1, C, 64, 64): the last context frame, and a random
    training frame (seeded by ``seed``)."""
    random_frames = dataset.train_batch(step=-1, batch_size=truth.shape[0], seq_len=1, seed=seed)
    return {"last_frame": truth[:, context - 1:context], "random_frame": random_frames}


METRIC_NAMES = {
    "psnr": "PSNR of each sample's prediction",
    "ssim": "SSIM of each sample's prediction",
    "psnr_best": "PSNR of the best of the {samples} samples of each sequence (highest mean PSNR over the predicted "
                 "frames)",
    "ssim_best": "SSIM of the best of the {samples} samples of each sequence (highest mean SSIM over the predicted "
                 "frames)",
    "psnr_last_frame": "PSNR of repeating the last context frame",
    "ssim_last_frame": "SSIM of repeating the last context frame",
    "psnr_random_frame": "PSNR of a random training frame",
    "ssim_random_frame": "SSIM of a random training frame",
}


def metric_variable(name: str, scores: np.ndarray, protocol: Protocol, samples: int) -> tuple:
    """The (dims, values, attrs) of one metric variable: its units and the conventions it was computed with."""
    metric = name.split("_")[0]
    conventions = protocol.conventions()
    baseline = name.endswith("_frame")
    attrs = {
        "units": "dB" if metric == "psnr" else "1",
        "long_name": METRIC_NAMES[name].format(samples=samples),
        "protocol": protocol.name,
        "convention": conventions[metric],
        "frames": "ground-truth uint8 frames / 255" if baseline else conventions["frames"],
    }
    dims = ("sample", "sequence", "time")[3 - scores.ndim:]
    return dims, scores.astype(np.float32), attrs


def to_dataset(run: TrainedRun, *, prediction: np.ndarray, truth: np.ndarray, has_truth: np.ndarray, context: int,
               horizon: int, scores: dict[str, np.ndarray], kl: np.ndarray, kl_table: tuple, protocol: Protocol,
               seed: int, prior_levels: int) -> xr.Dataset:
    """The rollout as named arrays with units, and the run's config, the protocol and versions in the attributes."""
    S, N, T, C = prediction.shape[:4]
    frame = ("sample", "sequence", "time", "channel", "y", "x")
    ds = xr.Dataset(
        {
            "prediction": (frame, prediction, {
                "long_name": "decoded frames: reconstructions of the context, then open-loop predictions",
                "units": "pixel intensity 0-255"}),
            "truth": (frame[1:], truth, {"long_name": "ground-truth frames (zeros where has_truth is false)",
                                         "units": "pixel intensity 0-255"}),
            "is_context": ("time", np.arange(T) < context, {"long_name": "frame was given to the guide"}),
            "has_truth": (("sequence", "time"), has_truth, {"long_name": "the test video reaches this frame"}),
            **{name: metric_variable(name, values, protocol, S) for name, values in scores.items()},
            "kl": (("sequence", "level", "time"), kl, {
                "units": "nats", "long_name": "KL[q || p] at each active step (NaN: level inactive)"}),
            "kl_table": kl_table,
        },
        coords={"sample": np.arange(S), "sequence": np.arange(N), "time": np.arange(T), "channel": np.arange(C),
                "y": np.arange(64), "x": np.arange(64), "level": np.arange(1, run.cfg.levels + 1)},
        attrs={
            **provenance("pyro-cwvae open-loop rollout"),
            "config": run.cfg.to_json(),
            "checkpoint_step": run.step,
            "elbo": run.cfg.elbo,  # the estimator the run was trained with: trace or meanfield
            "seed": seed,
            "context": context,
            "horizon": horizon,
            "prior_levels": prior_levels,
            "protocol": protocol.name,
            **{f"protocol_{key}": line for key, line in protocol.conventions().items()},
        },
    )
    ds["time"].attrs.update(units="frames", long_name="frames since the first context frame")
    ds["level"].attrs.update(long_name="level of the hierarchy (1 is the fastest)")
    return ds


def summary(ds: xr.Dataset) -> str:
    """The rollout in two lines: its scores over the predicted frames as its protocol reports them, and the KL
    of each level per training sequence (Table 1)."""
    protocol = PROTOCOLS[ds.attrs["protocol"]]
    predicted = ~ds.is_context
    best = protocol.best_of_samples
    suffix, how = ("_best", f"best of {ds.sizes['sample']} samples") if best else ("", "all samples")
    psnr_, ssim_ = (ds[metric + suffix].where(predicted) for metric in ("psnr", "ssim"))
    psnr_ = psnr_.where(np.isfinite(psnr_))  # a frame predicted exactly has no finite PSNR
    table = ds.kl_table
    kls = ", ".join(f"level {int(level)} {value:.1f}" for level, value in zip(table.level, table.values))
    return (f"PSNR {float(psnr_.mean()):.2f} dB, SSIM {float(ssim_.mean()):.3f} over the predicted frames "
            f"({protocol.name} protocol, {how})\n"
            f"KL per training sequence of {table.frames_per_sequence} frames (nats): {kls}")


def write_rollout(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as NetCDF atomically; images as zlib-compressed uint8, one chunk per frame block."""
    S, N, T, C = ds.prediction.shape[:4]
    block = min(T, 64)
    encoding = {
        "prediction": {"zlib": True, "complevel": 4, "chunksizes": (1, 1, block, C, 64, 64)},
        "truth": {"zlib": True, "complevel": 4, "chunksizes": (1, block, C, 64, 64)},
    }
    return write_netcdf(ds, path, encoding)
