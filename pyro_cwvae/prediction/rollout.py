"""Open-loop rollouts of a trained run (paper Section 3, "Evaluation"), as one dataset and its NetCDF file: the
predictions, their spread over samples, their PSNR and SSIM with baselines, and the per-level KL (Sections 3.8-3.9).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.errors import UserError
from pyro_cwvae.files.netcdf import ROLLOUT_TITLE, provenance, write_netcdf
from pyro_cwvae.model.config import Config
from pyro_cwvae.prediction.frames import baseline_frames, decode_and_score, read_test_frames, score_frames
from pyro_cwvae.prediction.kl import NO_KL_TABLE, kl_table_variable, truth_kls
from pyro_cwvae.prediction.latents import sampled_trace
from pyro_cwvae.prediction.options import Intervention, PredictionOptions
from pyro_cwvae.prediction.run import Run
from pyro_cwvae.prediction.scores import PROTOCOLS, Protocol, best_of_samples
from pyro_cwvae.prediction.spread import PixelSpread, spread_variables
from pyro_cwvae.prediction.time_axis import TIME_ATTRS, is_context


def rollout(run: Run, options: PredictionOptions = PredictionOptions(), intervention: Intervention = Intervention(),
            progress: bool = False, *, dataset: VideoDataset | None = None) -> xr.Dataset:
    """Predict ``options.horizon`` frames after the ``options.context`` frames of the first ``options.sequences``
    test videos, scored under ``options.protocol``, with the spread over samples and under ``intervention``.
    The videos are ``dataset``'s, by default the run's data; ``options.device`` is the loaded run's own."""
    cfg = run.cfg
    dataset = run.dataset(options.data_dir) if dataset is None else dataset
    check_options(cfg, dataset, options, intervention)
    context, samples, sequences = options.context_of(cfg), options.samples, options.sequences
    total = None if options.horizon is None else context + options.horizon
    truth, has_truth, shortest = read_test_frames(dataset, sequences, total, context)
    total = truth.shape[1]
    scoring = PROTOCOLS[options.protocol]
    device = next(run.nets.parameters()).device

    bar = tqdm(total=4, desc="rollout", disable=not progress, unit="stage")
    bar.set_postfix_str(f"filtering {context} frames, predicting {total - context}")
    trace = sampled_trace(run, truth, context, samples, intervention, options.seed)
    bar.update()
    bar.set_postfix_str(f"decoding, {scoring.name} metrics")
    pixels = PixelSpread(samples, sequences, total, cfg.channels)
    prediction, psnr_, ssim_ = decode_and_score(run, trace.nodes["_RETURN"]["value"], truth, scoring, progress,
                                                pixels)
    scores = {"psnr": psnr_.reshape(samples, sequences, total), "ssim": ssim_.reshape(samples, sequences, total)}
    bar.update()
    bar.set_postfix_str("baselines")
    for name, frames in baseline_frames(dataset, truth, context, options.seed).items():
        scores[f"psnr_{name}"], scores[f"ssim_{name}"] = score_frames(frames, truth, scoring, device)
    bar.update()
    bar.set_postfix_str("per-level KL")
    kl_frames = min(total, shortest)  # the KL needs the true frames of every sequence
    kl = truth_kls(run, truth, kl_frames, device)
    bar.update()
    bar.close()

    mask_and_pick_best(scores, has_truth, context)
    ds = to_dataset(run, prediction=prediction.reshape(samples, sequences, total, cfg.channels, 64, 64),
                    truth=truth, has_truth=has_truth, context=context, horizon=total - context, scores=scores, kl=kl,
                    kl_table=kl_table_variable(kl, kl_frames, cfg.seq_len), protocol=scoring, seed=options.seed,
                    prior_levels=intervention.prior_levels)
    return ds.assign(spread_variables(trace, pixels, cfg.levels)).assign_attrs(intervention.attrs())


def check_options(cfg: Config, dataset: VideoDataset, options: PredictionOptions,
                  intervention: Intervention = Intervention()) -> None:
    """``UserError`` for options that cannot work with this run and data."""
    options.check()
    intervention.check(cfg.levels, options.sequences)
    if dataset.channels != cfg.channels:
        raise UserError(f"the {dataset.name} data has {dataset.channels} channel(s) but the run was trained on "
                        f"{cfg.channels}")


def mask_and_pick_best(scores: dict[str, np.ndarray], has_truth: np.ndarray, context: int) -> None:
    """NaN in ``scores`` where a video has no frame, and the ``_best`` of the samples over the predicted frames."""
    for score in scores.values():
        score[..., ~has_truth] = np.nan
    predicted = has_truth & ~is_context(has_truth.shape[1], context)
    for metric in ("psnr", "ssim"):
        scores[f"{metric}_best"] = best_of_samples(scores[metric], predicted)


METRIC_NAMES = {  # by the part of a metric variable's name after psnr_ or ssim_
    "": "{metric} of each sample's prediction",
    "best": "{metric} of the best of the {samples} samples of each sequence (highest mean {metric} over the "
            "predicted frames)",
    "last_frame": "{metric} of repeating the last context frame",
    "random_frame": "{metric} of a random training frame",
}


def metric_variable(name: str, scores: np.ndarray, protocol: Protocol, samples: int) -> tuple:
    """The (dims, values, attrs) of one metric variable: its units and the conventions it was computed with."""
    metric, _, kind = name.partition("_")
    conventions = protocol.conventions()
    baseline = name.endswith("_frame")
    attrs = {
        "units": "dB" if metric == "psnr" else "1",
        "long_name": METRIC_NAMES[kind].format(metric=metric.upper(), samples=samples),
        "protocol": protocol.name,
        "convention": conventions[metric],
        "frames": "ground-truth uint8 frames / 255" if baseline else conventions["frames"],
    }
    dims = ("sample", "sequence", "time")[3 - scores.ndim:]
    return dims, scores.astype(np.float32), attrs


def to_dataset(run: Run, *, prediction: np.ndarray, truth: np.ndarray, has_truth: np.ndarray, context: int,
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
            "is_context": ("time", is_context(T, context), {"long_name": "frame was given to the guide"}),
            "has_truth": (("sequence", "time"), has_truth, {"long_name": "the test video reaches this frame"}),
            **{name: metric_variable(name, values, protocol, S) for name, values in scores.items()},
            "kl": (("sequence", "level", "time"), kl, {
                "units": "nats", "long_name": "KL[q || p] at each active step (NaN: level inactive)"}),
            "kl_table": kl_table,
        },
        coords={"sample": np.arange(S), "sequence": np.arange(N), "time": np.arange(T), "channel": np.arange(C),
                "y": np.arange(64), "x": np.arange(64), "level": np.arange(1, run.cfg.levels + 1)},
        attrs={
            **provenance(ROLLOUT_TITLE),
            "config": run.cfg.to_json(), "checkpoint_step": run.step,
            "elbo": run.cfg.elbo,  # the estimator the run was trained with: trace or meanfield
            "seed": seed, "context": context, "horizon": horizon, "prior_levels": prior_levels,
            "protocol": protocol.name,
            **{f"protocol_{key}": line for key, line in protocol.conventions().items()},
        },
    )
    ds["time"].attrs.update(TIME_ATTRS)
    ds["level"].attrs.update(long_name="level of the hierarchy (1 is the fastest)")
    return ds


def summary(ds: xr.Dataset) -> str:
    """The rollout in two lines: its scores over the predicted frames as its protocol reports them, and the KL
    of each level per training sequence (Table 1)."""
    protocol = PROTOCOLS[ds.attrs["protocol"]]
    predicted = ~ds.is_context
    best = protocol.best_of_samples
    suffix, how = ("_best", f"best of {ds.sizes['sample']} sample(s)") if best else ("", "all samples")
    psnr_, ssim_ = (ds[metric + suffix].where(predicted) for metric in ("psnr", "ssim"))
    psnr_ = psnr_.where(np.isfinite(psnr_))  # a frame predicted exactly has no finite PSNR
    table = ds.kl_table
    kls = ", ".join(f"level {int(level)} {value:.1f}" for level, value in zip(table.level, table.values)
                    ) if np.isfinite(table.values).any() else NO_KL_TABLE
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
