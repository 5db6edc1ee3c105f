"""Open-loop rollouts (paper Section 3, "Evaluation") and per-level KLs (Sections 3.8-3.9) of a trained run.

The guide filters the first ``context`` frames (each level the steps whose window of frames lies wholly inside
the context, as the official code does; the others are drawn from the prior); the model then runs over context +
horizon frames with those latents replayed and every later latent drawn from its prior, so no frame after the
context can reach a prediction. Everything is done with the run's own model and guide programs through
``poutine.trace`` / ``poutine.replay`` / ``poutine.escape``, so a variant a user trained is rolled out as written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.poutine.runtime import NonlocalExit
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from . import __version__
from .atomic import atomic_path
from .checkpoint import load_checkpoint, restore_nets
from .config import Config
from .data import VideoDataset
from .elbo import level_of
from .metrics import psnr, ssim
from .nets import CWVAENets
from .programs import load_programs
from .errors import UserError
from .train import check_programs_match, resolve_device

DECODE_CHUNK = 256  # frames decoded per call: memory stays flat whatever the horizon


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


def read_run_config(run_dir: str | Path) -> Config:
    """The config of a run, from its checkpoint (which also proves the run has one)."""
    return Config.from_dict(load_checkpoint(Path(run_dir))["config"])


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


def latents_level_by_level(run: TrainedRun, context: torch.Tensor, prior_levels: int) -> poutine.Trace:
    """``context_latents`` in general: per level a guide pass for its filtered steps and a model pass for the rest,
    each replayed on the levels above and stopped before the levels below."""
    cfg, clock = run.cfg, run.cfg.clock
    B, T = context.shape[:2]
    decided = poutine.Trace()
    for level in range(cfg.levels, 0, -1):
        sites = [clock.site_name(level, frame) for frame in clock.active_frames(level, T)]
        filtered = set(sites[:filtered_steps(cfg, level, T, prior_levels)])
        from_prior = set(sites) - filtered
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


@torch.no_grad()
def decode(run: TrainedRun, states: torch.Tensor, progress: bool = False) -> np.ndarray:
    """uint8 frames (B, T, C, 64, 64) of the decoder's means, decoded a chunk of frames at a time."""
    B, T = states.shape[:2]
    out = np.empty((B, T, run.cfg.channels, 64, 64), dtype=np.uint8)
    step = max(1, DECODE_CHUNK // B)
    for start in tqdm(range(0, T, step), desc="decoding", unit="chunk", disable=not progress, leave=False):
        chunk = states[:, start:start + step]
        frames = run.nets.decoder(chunk).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        out[:, start:start + chunk.shape[1]] = frames.cpu().numpy()
    return out


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
        level = level_of(name)
        if level is None or site["type"] != "sample":
            continue
        frame = int(name.rsplit("_", 1)[1])
        kl[:, level - 1, frame] = kl_divergence(site["fn"], model_trace.nodes[name]["fn"]).cpu().numpy()
    return kl


def frames_metrics(prediction: np.ndarray, truth: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """PSNR and SSIM of uint8 frames (..., C, H, W) against truth broadcast to them, per frame."""
    pred = torch.from_numpy(prediction).to(device).float().div_(255)
    true = torch.from_numpy(np.broadcast_to(truth, prediction.shape).copy()).to(device).float().div_(255)
    return psnr(pred, true).float().cpu().numpy(), ssim(pred, true).float().cpu().numpy()


def rollout(run_dir: str | Path, dataset: VideoDataset, *, horizon: int, context: int | None = None,
            samples: int = 3, sequences: int = 8, seed: int = 0, device: str = "auto", prior_levels: int = 0,
            progress: bool = True) -> xr.Dataset:
    """Predict ``horizon`` frames after ``context`` frames of the first ``sequences`` test videos."""
    torch_device = resolve_device(device)
    run = load_run(run_dir, torch_device)
    cfg = run.cfg
    context = cfg.context if context is None else context
    if horizon < 1 or context < 1 or samples < 1 or sequences < 1:
        raise UserError("--horizon, --context, --samples and --sequences must each be at least 1")
    if not 0 <= prior_levels <= cfg.levels:
        raise UserError(f"--prior-levels {prior_levels} must lie between 0 and the run's {cfg.levels} levels")
    if dataset.channels != cfg.channels:
        raise UserError(f"the {dataset.name} data has {dataset.channels} channel(s) but the run was trained on {cfg.channels}")
    videos = dataset.test_videos(sequences)
    shortest = min(len(v) for v in videos)
    if context > shortest:
        raise UserError(f"--context {context} is longer than the shortest of the {sequences} test videos ({shortest} frames)")
    total = context + horizon
    truth = np.zeros((sequences, total, cfg.channels, 64, 64), dtype=np.uint8)
    has_truth = np.zeros((sequences, total), dtype=bool)
    for n, v in enumerate(videos):
        truth[n, :len(v[:total])] = v[:total]
        has_truth[n, :len(v[:total])] = True

    bar = tqdm(total=4, desc="rollout", disable=not progress, unit="stage")
    pyro.set_rng_seed(seed)
    context_video = torch.from_numpy(truth[:, :context]).to(torch_device).float().div_(255)
    bar.set_postfix_str(f"filtering {context} frames, predicting {horizon}")
    states = open_loop_states(run, context_video.repeat(samples, 1, 1, 1, 1), total, prior_levels)
    bar.update()
    bar.set_postfix_str("decoding")
    prediction = decode(run, states, progress).reshape(samples, sequences, total, cfg.channels, 64, 64)
    bar.update()

    bar.set_postfix_str("metrics")
    psnr_, ssim_ = frames_metrics(prediction, truth[None], torch_device)
    last = np.broadcast_to(truth[:, context - 1:context], truth.shape)
    random_frames = dataset.train_batch(step=-1, batch_size=sequences, seq_len=1, seed=seed)
    psnr_last, ssim_last = frames_metrics(truth, last, torch_device)
    psnr_random, ssim_random = frames_metrics(truth, np.broadcast_to(random_frames, truth.shape), torch_device)
    bar.update()

    bar.set_postfix_str("per-level KL")
    kl_frames = min(total, shortest)  # the KL needs the true frames of every sequence
    kl = np.full((sequences, cfg.levels, total), np.nan, dtype=np.float32)
    kl[:, :, :kl_frames] = level_kls(run, torch.from_numpy(truth[:, :kl_frames]).to(torch_device).float().div_(255))
    bar.update()
    bar.close()

    no_truth = ~has_truth
    for metric in (psnr_, ssim_):
        metric[:, no_truth] = np.nan
    for metric in (psnr_last, ssim_last, psnr_random, ssim_random):
        metric[no_truth] = np.nan
    return to_dataset(run, prediction, truth, has_truth, context, horizon, psnr_, ssim_, psnr_last, ssim_last,
                      psnr_random, ssim_random, kl, seed=seed, prior_levels=prior_levels)


def to_dataset(run, prediction, truth, has_truth, context, horizon, psnr_, ssim_, psnr_last, ssim_last,
               psnr_random, ssim_random, kl, *, seed, prior_levels) -> xr.Dataset:
    """The rollout as named arrays with units, and the run's config and versions in the attributes."""
    S, N, T, C = prediction.shape[:4]
    frame = ("sample", "sequence", "time", "channel", "y", "x")
    db = {"units": "dB"}
    ds = xr.Dataset(
        {
            "prediction": (frame, prediction, {"long_name": "decoded frames: reconstructions of the context, then open-loop predictions", "units": "pixel intensity 0-255"}),
            "truth": (frame[1:], truth, {"long_name": "ground-truth frames (zeros where has_truth is false)", "units": "pixel intensity 0-255"}),
            "is_context": ("time", np.arange(T) < context, {"long_name": "frame was given to the guide"}),
            "has_truth": (("sequence", "time"), has_truth, {"long_name": "the test video reaches this frame"}),
            "psnr": (frame[:3], psnr_.astype(np.float32), {**db, "long_name": "PSNR of the prediction"}),
            "ssim": (frame[:3], ssim_.astype(np.float32), {"units": "1", "long_name": "SSIM of the prediction"}),
            "psnr_last_frame": (frame[1:3], psnr_last, {**db, "long_name": "PSNR of repeating the last context frame"}),
            "ssim_last_frame": (frame[1:3], ssim_last, {"units": "1", "long_name": "SSIM of repeating the last context frame"}),
            "psnr_random_frame": (frame[1:3], psnr_random, {**db, "long_name": "PSNR of a random training frame"}),
            "ssim_random_frame": (frame[1:3], ssim_random, {"units": "1", "long_name": "SSIM of a random training frame"}),
            "kl": (("sequence", "level", "time"), kl, {"units": "nats", "long_name": "KL[q || p] at each active step (NaN: level inactive)"}),
        },
        coords={"sample": np.arange(S), "sequence": np.arange(N), "time": np.arange(T), "channel": np.arange(C),
                "y": np.arange(64), "x": np.arange(64), "level": np.arange(1, run.cfg.levels + 1)},
        attrs={
            "title": "pyro-cwvae open-loop rollout",
            "config": run.cfg.to_json(),
            "checkpoint_step": run.step,
            "seed": seed,
            "context": context,
            "horizon": horizon,
            "prior_levels": prior_levels,
            "data_range": "metrics on frames scaled to [0, 1] (uint8 / 255), data_range 1",
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    ds["time"].attrs.update(units="frames", long_name="frames since the first context frame")
    ds["level"].attrs.update(long_name="level of the hierarchy (1 is the fastest)")
    return ds


def versions() -> str:
    import netCDF4

    return ", ".join(f"{name} {version}" for name, version in [
        ("pyro-cwvae", __version__), ("pyro-ppl", pyro.__version__), ("torch", torch.__version__),
        ("numpy", np.__version__), ("xarray", xr.__version__), ("netCDF4", netCDF4.__version__)])


def write_rollout(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as NetCDF atomically; images as zlib-compressed uint8, one chunk per frame block."""
    S, N, T, C = ds.prediction.shape[:4]
    block = min(T, 64)
    encoding = {
        "prediction": {"zlib": True, "complevel": 4, "chunksizes": (1, 1, block, C, 64, 64)},
        "truth": {"zlib": True, "complevel": 4, "chunksizes": (1, block, C, 64, 64)},
    }
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return Path(path)
