"""The paper's evaluation of open-loop predictions (Section 3, "Evaluation"; Figure 5; Table 1) for several runs
side by side, as one dataset with a ``run`` dimension: per frame SSIM and PSNR under the protocol, LPIPS and the
high-level accuracy of Figure 5; FVD per window of the horizon; the Table 1 KL and, with ``particles`` > 0, the
importance-weighted bound. The ground truth and the baselines are scored once for all runs (``truth.py``).
"""
from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.accuracy import ACCURACIES
from pyro_cwvae.evaluation.fvd import CLIP_FRAMES, valid_clips
from pyro_cwvae.evaluation.scoring import HIGHER_IS_BETTER, RunScores, Scores, ceiling, score_baselines, score_run
from pyro_cwvae.evaluation.truth import GroundTruth, Scorers, ground_truth
from pyro_cwvae.files.netcdf import EVALUATION_TITLE, provenance, write_netcdf
from pyro_cwvae.prediction.kl import NO_KL_TABLE
from pyro_cwvae.prediction.options import PredictionOptions
from pyro_cwvae.prediction.rollout import check_options
from pyro_cwvae.prediction.time_axis import TIME_ATTRS, is_context
from pyro_cwvae.prediction.run import Run, load_run
from pyro_cwvae.prediction.scores import PROTOCOLS, Protocol
from pyro_cwvae.training.devices import resolve_device

BASELINES = {"last_frame": "last frame of the context", "random_frame": "random frame of the training split"}
"""The baselines that show one frame throughout, and what they show."""
METRICS = {"psnr": ("PSNR", "dB"), "ssim": ("SSIM", "1"), "lpips": ("LPIPS (AlexNet, v0.1; lower is better)", "1")}


def evaluate(run_dirs: list[str | Path], options: PredictionOptions, *, particles: int = 0, fvd_window: int = 100,
             perceptual: bool = True, dataset: VideoDataset | None = None, scorers: Scorers | None = None,
             progress: bool = True, trust_programs: bool = False) -> xr.Dataset:
    """Score the open-loop predictions of each run in ``run_dirs`` on the first ``options.sequences`` test videos
    of ``dataset`` (default: the runs' own data); ``perceptual`` False leaves out LPIPS and FVD (no published
    weights needed); ``trust_programs``: see ``load_run``."""
    options.check()
    if fvd_window < 1:
        raise UserError(f"--fvd-window must be at least 1, got {fvd_window}")
    if particles < 0:
        raise UserError(f"--particles must be 0 (no bound) or more, got {particles}")
    device = resolve_device(options.device)
    runs = {name: load_run(path, device, trust_programs)  # each checkpoint read once
            for name, path in named_runs(run_dirs).items()}
    check_same_data(runs)
    first = next(iter(runs.values()))
    if dataset is None and options.data_dir is None:
        warn_of_other_folders(runs)
    dataset = dataset if dataset is not None else first.dataset(options.data_dir)
    for run in runs.values():
        check_options(run.cfg, dataset, options)
    bar = tqdm(total=1 + (3 + bool(particles)) * len(runs), desc="evaluate", unit="stage", disable=not progress)
    bar.set_postfix_str("ground truth and baselines")
    test = ground_truth(dataset, first.cfg, sequences=options.sequences, context=shared_context(runs, options),
                        horizon=options.horizon, fvd_window=fvd_window, protocol=PROTOCOLS[options.protocol],
                        perceptual=perceptual, scorers=scorers, device=device, progress=progress)
    baselines = score_baselines(test, dataset, options.seed)
    if test.truth_features is not None and not np.isfinite(next(iter(baselines.values())).fvd_horizon):
        clips = sum(int(valid_clips(window, test.has_truth).sum()) for window in test.windows)
        warnings.warn(f"FVD is NaN: a Frechet distance needs at least 2 true clips of up to {CLIP_FRAMES} frames over "
                      f"the horizon, and {options.sequences} sequence(s) give {clips}; ask for more --sequences or a "
                      "longer --horizon")
    bar.update()
    results = {name: score_run(name, run, test, options.samples, particles, options.seed, bar, progress)
               for name, run in runs.items()}
    bar.close()
    attrs = dict(samples=options.samples, particles=particles, seed=options.seed, fvd_window=fvd_window,
                 sequences=options.sequences, context=test.context, horizon=test.truth.shape[1] - test.context)
    return to_dataset(results, runs, baselines, test, dataset.name, attrs)


def named_runs(run_dirs: list[str | Path]) -> dict[str, Path]:
    """Each run directory under its folder name, or its path as given where two folders share a name."""
    if not run_dirs:
        raise UserError("name at least one run directory to evaluate")
    paths = [Path(run) for run in run_dirs]
    if len({path.resolve() for path in paths}) < len(paths):
        raise UserError("a run directory is named twice")
    clashes = Counter(path.name for path in paths)
    return {path.name if clashes[path.name] == 1 else str(path): path for path in paths}


def check_same_data(runs: dict[str, Run]) -> None:
    """``UserError`` unless every run was trained on the same data (dataset, speed of generated digits, channels):
    scores on different test sets cannot stand side by side."""
    data = {name: (run.cfg.dataset, run.cfg.speed, run.cfg.channels) for name, run in runs.items()}
    if len(set(data.values())) > 1:
        trained = ", ".join(f"{name}: {kind} (speed {speed:g}, {channels} channel(s))"
                            for name, (kind, speed, channels) in data.items())
        raise UserError(f"the runs were trained on different data and cannot be compared: {trained}")


def warn_of_other_folders(runs: dict[str, Run]) -> None:
    """Runs of one dataset may have read it from different folders, or generated it from different seeds: say whose
    test videos score them all, the first run's."""
    folders = {name: os.path.normpath(os.path.abspath(run.cfg.data_dir)) if run.cfg.data_dir else
               f"generated on the fly (seed {run.cfg.seed})" for name, run in runs.items()}
    if len(set(folders.values())) > 1:
        first = next(iter(runs))
        warnings.warn(f"the runs read their {runs[first].cfg.dataset} videos from different places ("
                      + ", ".join(f"{name}: {folder}" for name, folder in folders.items())
                      + f"); all are scored on the test videos of the first, {first} (--data-dir chooses others)")


def shared_context(runs: dict[str, Run], options: PredictionOptions) -> int:
    """The context frames of every run: ``options.context``, else the runs' own, which must then agree."""
    contexts = {name: options.context_of(run.cfg) for name, run in runs.items()}
    if len(set(contexts.values())) > 1:
        given = ", ".join(f"{name}: {context}" for name, context in contexts.items())
        raise UserError(f"the runs were trained with different --context ({given}): give one with --context")
    return next(iter(contexts.values()))


# ---- the dataset ------------------------------------------------------------------------------------------------

def how_aggregated(name: str, protocol: Protocol, samples: int) -> str:
    """How the per-frame scores of ``name`` became one curve."""
    if protocol.best_of_samples and name in HIGHER_IS_BETTER:
        best = "highest" if HIGHER_IS_BETTER[name] else "lowest"
        return (f"per sequence the best of {samples} sample(s) ({best} mean over the predicted frames), "
                "mean over sequences")
    return f"mean over {samples} sample(s) and the sequences"


def metric_attrs(test: GroundTruth, samples: int) -> dict[str, dict]:
    """What the curve of each metric is, what it reads and how it was aggregated."""
    conventions = test.protocol.conventions()
    about = {name: {"long_name": long_name, "units": units, "frames": conventions["frames"]}
             for name, (long_name, units) in METRICS.items()}
    about["lpips"]["frames"] = "the frames the protocol scores, clipped to [0, 1]; truth uint8 / 255"
    if test.accuracy is not None:
        about[test.accuracy.name] = test.accuracy.attrs(test.labels_known)
    for name, attrs in about.items():
        attrs.update(aggregation=how_aggregated(name, test.protocol, samples), protocol=test.protocol.name)
        attrs.update({"convention": conventions[name]} if name in conventions else {})
    return about


def curve_variables(results: dict[str, RunScores], baselines: dict[str, Scores], test: GroundTruth,
                    samples: int) -> dict[str, tuple]:
    """The per-time variables: each metric per run, each baseline, and the accuracy's ceiling."""
    variables, about = {}, metric_attrs(test, samples)
    for name in next(iter(results.values())).scores.curves:
        attrs = about[name]
        variables[name] = (("run", "time"), np.stack([r.scores.curves[name] for r in results.values()])
                           .astype(np.float32), attrs)
        for baseline, shows in BASELINES.items():
            variables[f"{name}_{baseline}"] = (("time",), baselines[baseline].curves[name].astype(np.float32), {
                "long_name": f"{attrs['long_name']}: repeating the {shows}", "units": attrs["units"],
                "aggregation": "mean over sequences"})
    top = ceiling(test)
    if top is not None:
        variables[f"{test.accuracy.name}_truth"] = (("time",), top.astype(np.float32), {
            "long_name": test.accuracy.ceiling_name, "units": "1"})
    return variables


def fvd_variables(results: dict[str, RunScores], baselines: dict[str, Scores], test: GroundTruth
                  ) -> dict[str, tuple]:
    """FVD per window and over the horizon, per run and for the baselines."""
    if test.truth_features is None:
        return {}
    how = (f"Frechet distance of I3D (Kinetics-400) features of {CLIP_FRAMES}-frame clips, every sample's "
           "predictions against the true clips; frames resized to 224x224 as the reference FVD")
    attrs = {"units": "1", "clip_frames": CLIP_FRAMES, "method": how}
    variables = {
        "fvd": (("run", "window"), np.stack([r.scores.fvd for r in results.values()]).astype(np.float32),
                {**attrs, "long_name": "FVD of the clips in each window of the horizon (lower is better)"}),
        "fvd_horizon": (("run",), np.array([r.scores.fvd_horizon for r in results.values()], dtype=np.float32),
                        {**attrs, "long_name": "FVD of all clips of the horizon"}),
    }
    for baseline in BASELINES:
        shown = baseline.replace("_", " ")
        variables[f"fvd_{baseline}"] = (("window",), baselines[baseline].fvd.astype(np.float32),
                                        {**attrs, "long_name": f"FVD per window: the {shown}"})
        variables[f"fvd_horizon_{baseline}"] = ((), np.float32(baselines[baseline].fvd_horizon),
                                                {**attrs, "long_name": f"FVD over the horizon: the {shown}"})
    return variables


def kl_variable(results: dict[str, RunScores], levels: int) -> tuple:
    """``kl_table(run, level)``: Table 1's quantity of each run, NaN for levels a run lacks."""
    table = np.full((len(results), levels), np.nan, dtype=np.float32)
    for row, result in enumerate(results.values()):
        table[row, :result.kl_table.size] = result.kl_table.values
    attrs = dict(next(iter(results.values())).kl_table.attrs)
    attrs["long_name"] += "; NaN for levels a run lacks"
    return ("run", "level"), table, attrs


def bound_variables(results: dict[str, RunScores], test: GroundTruth, particles: int) -> dict[str, tuple]:
    """``iwae`` and ``elbo`` (run, sequence) in nats per frame, when the bounds were computed."""
    if not particles:
        return {}
    frames = f"nats per frame of the first {test.kl_frames} frames of each test video; higher is better"
    names = {"iwae": f"importance-weighted bound IWAE_{particles} on log p(x)",
             "elbo": f"ELBO from the same {particles} draws of the guide"}
    return {name: (("run", "sequence"), np.stack([getattr(r, name) for r in results.values()]).astype(np.float32),
                   {"long_name": long_name, "units": frames, "particles": particles})
            for name, long_name in names.items()}


def to_dataset(results: dict[str, RunScores], runs: dict[str, Run], baselines: dict[str, Scores],
               test: GroundTruth, dataset: str, options: dict) -> xr.Dataset:
    """All numbers as named arrays, with the runs' configs, the protocol and versions in the attributes."""
    N, T = test.has_truth.shape
    levels = max(run.cfg.levels for run in runs.values())
    ds = xr.Dataset(
        {
            **curve_variables(results, baselines, test, options["samples"]),
            **fvd_variables(results, baselines, test),
            "kl_table": kl_variable(results, levels),
            **bound_variables(results, test, options["particles"]),
            "checkpoint_step": ("run", np.array([r.checkpoint_step for r in results.values()])),
            "is_context": ("time", is_context(T, test.context), {"long_name": "frame was given to the guide"}),
            "has_truth": (("sequence", "time"), test.has_truth, {"long_name": "the test video reaches this frame"}),
        },
        coords={
            "run": list(results), "time": np.arange(T), "level": np.arange(1, levels + 1),
            "sequence": np.arange(N), "window": np.arange(len(test.windows)),
            "window_start": ("window", np.array([w.start for w in test.windows])),
            "window_stop": ("window", np.array([w.stop for w in test.windows])),
            "run_dir": ("run", [str(run.path) for run in runs.values()]),
        },
        attrs={
            **provenance(EVALUATION_TITLE),
            "dataset": dataset,
            "configs": json.dumps({name: run.cfg.to_dict() for name, run in runs.items()}),
            **options,
            "protocol": test.protocol.name,
            **{f"protocol_{key}": line for key, line in test.protocol.conventions().items()},
            "perceptual": int(test.lpips is not None),
        },
    )
    ds["time"].attrs.update(TIME_ATTRS)
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
    metrics = [name for name in (*METRICS, *(kind.name for kind in ACCURACIES.values())) if name in ds]

    def line(label: str, values: Callable[[str], xr.DataArray], fvd: float | None) -> str:
        parts = [f"{name} {float(values(name).where(predicted).mean()):.3f}" for name in metrics]
        return f"{label}: " + ", ".join(parts + ([f"fvd {fvd:.1f}"] if fvd is not None else []))

    lines = []
    for run in ds.run.values:
        text = line(str(run), lambda name: ds[name].sel(run=run),
                    float(ds.fvd_horizon.sel(run=run)) if "fvd_horizon" in ds else None)
        kl = ", ".join(f"{v:.1f}" for v in ds.kl_table.sel(run=run).values if np.isfinite(v))
        text += f"; KL per level (nats per training sequence) {kl or NO_KL_TABLE}"
        if "iwae" in ds:
            text += (f"; IWAE_{ds.iwae.attrs['particles']} {float(ds.iwae.sel(run=run).mean()):.2f} >= "
                     f"ELBO {float(ds.elbo.sel(run=run).mean()):.2f} nats/frame")
        lines.append(text)
    for baseline in BASELINES:
        lines.append(line(baseline.replace("_", " "), lambda name: ds[f"{name}_{baseline}"],
                          float(ds[f"fvd_horizon_{baseline}"]) if "fvd_horizon" in ds else None))
    lines += [f"{name} on the true frames (a perfect prediction's): "
              f"{float(ds[f'{name}_truth'].where(predicted).mean()):.3f}" for name in metrics if f"{name}_truth" in ds]
    return "\n".join(lines)
