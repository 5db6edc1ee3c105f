"""Figures of a rollout, as a reader of the CW-VAE paper expects them: predicted frames against ground truth
(Figures 2, 4 and 6) as a strip and a GIF, PSNR and SSIM against the frames predicted with the copy-frame
baselines (Figure 1), and the KL of each level (Table 1)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from PIL import Image, ImageDraw

from pyro_cwvae.files.atomic import atomic_path
from pyro_cwvae.plots.files import check_rollout, save_figure
from pyro_cwvae.prediction.time_axis import frames_ahead

GIF_MAX_FRAMES = 300
GIF_FRAME_MS = 100
GIF_SCALE = 2
_GAP = 2  # pixels of white between frames in the strip and the GIF
_GROUP_GAP = 8  # pixels of white between sequences
_STRIP_CONTEXT = 4
"""Context frames in the strip: their posterior reconstructions show what the model has learned to encode."""
_STD_GAIN = 2  # the strip shows the per-pixel std over samples times this: std of pixels in [0, 255] is at most 127.5


def write_figures(ds: xr.Dataset, out_dir: Path, max_sequences: int = 4, max_frames: int = 12) -> list[Path]:
    """Write ``strip.png``, ``metrics.png``, ``kl.png``, ``rollout.gif`` and, when ``ds`` has the spread over
    samples, ``uncertainty.png`` into ``out_dir``; returns the paths written. ``max_sequences`` caps the sequences
    of the strip and the GIF, ``max_frames`` the predicted frames of the strip. ``UserError`` unless a rollout."""
    check_rollout(ds)
    out_dir = Path(out_dir)  # made by the first file written
    shown = ds.isel(sequence=slice(0, max_sequences))
    paths = [
        save_figure(plot_strip(shown, max_frames), out_dir / "strip.png"),
        save_figure(plot_metrics(ds), out_dir / "metrics.png"),
        save_figure(plot_kl(ds), out_dir / "kl.png"),
        write_gif(shown, out_dir / "rollout.gif"),
    ]
    if "prediction_std" in ds and "latent_std" in ds:
        paths.append(save_figure(plot_uncertainty(ds), out_dir / "uncertainty.png"))
    return paths


def plot_strip(ds: xr.Dataset, max_frames: int) -> plt.Figure:
    """Ground truth above each sample's prediction, for every sequence of ``ds``.
    Columns are a few context frames (the samples' rows show their reconstructions by the guide and decoder)
    followed by ``max_frames`` evenly spaced predicted frames, labelled with their time (frames counted from the
    first context frame). Each sequence is a block of rows: ground truth, one row per sample and, when ``ds`` has
    it, the per-pixel standard deviation over the samples (times ``_STD_GAIN``, white where they disagree).
    Frames without ground truth are left blank."""
    times = _strip_times(ds, max_frames)
    sub = ds.isel(time=times)
    truth = to_hwc(sub.truth.values)  # (sequence, time, H, W, C)
    has_truth = sub.has_truth.values
    truth = np.where(has_truth[:, :, None, None, None], truth, 255).astype(np.uint8)
    pred = to_hwc(sub.prediction.values)  # (sample, sequence, time, H, W, C)
    std = to_hwc(_std_image(sub.prediction_std.values)) if "prediction_std" in sub else None
    rows, labels = [], []
    for seq in range(sub.sizes["sequence"]):
        rows.append(truth[seq])
        labels.append(f"seq {int(sub.sequence[seq])} truth")
        for sample in range(sub.sizes["sample"]):
            rows.append(pred[sample, seq])
            labels.append(f"sample {int(sub.sample[sample])}")
        if std is not None:
            rows.append(std[seq])
            labels.append(f"std x{_STD_GAIN}")
    group = 1 + sub.sizes["sample"] + (std is not None)
    mosaic, row_centres, col_centres = tile_frames(rows, group)

    height, width = mosaic.shape[:2]
    fig, ax = plt.subplots(figsize=(1.5 + width / 64, 0.8 + height / 64))
    ax.imshow(display_frames(mosaic), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    time_labels = [f"{'ctx ' if c else ''}{int(t)}" for t, c in zip(sub.time.values, sub.is_context.values)]
    ax.set_xticks(col_centres, time_labels)
    ax.xaxis.tick_top()
    ax.set_yticks(row_centres, labels)
    ax.tick_params(length=0, labelsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"time (frames from the first context frame){_interventions(ds)}", fontsize=8)
    fig.tight_layout()
    return fig


def _std_image(std: np.ndarray) -> np.ndarray:
    """The uint8 per-pixel std (0-255 scale) as the strip shows it: times ``_STD_GAIN``, clipped."""
    return np.minimum(std.astype(np.int32) * _STD_GAIN, 255).astype(np.uint8)


def plot_uncertainty(ds: xr.Dataset) -> plt.Figure:
    """Where in time the samples disagree: the per-pixel std of the frames over samples (mean over pixels and
    sequences), and the spread of each level's latent over samples at the frames where that level is active
    (``latent_std``, mean over sequences). The dotted line marks the end of the context."""
    fig, (pixels, latents) = plt.subplots(1, 2, figsize=(10, 3.8))
    times = ds.time.values
    std = ds.prediction_std.astype(np.float32).mean(("channel", "y", "x"))
    pixels.plot(times, std.mean("sequence").values, color="C0")
    pixels.set_ylabel("pixel std over samples (0-255)")
    pixels.set_title("Frames: per-pixel spread over samples", fontsize=10)
    spread = ds.latent_std.mean("sequence")
    for i, level in enumerate(ds.level.values):
        values = spread.sel(level=level).values
        active = np.isfinite(values)
        latents.plot(times[active], values[active], "-o", color=f"C{i}", markersize=2.5, linewidth=1,
                     label=f"level {level}")
    latents.set_ylabel("latent std over samples")
    latents.set_title("Latents: spread of z over samples per level", fontsize=10)
    latents.legend(fontsize=8)
    context = ds.is_context.values
    for ax in (pixels, latents):
        ax.set_xlabel("time (frames)")
        ax.grid(alpha=0.3)
        if context.any():
            ax.axvline(times[context][-1], color="gray", linestyle=":", linewidth=1)
    fig.suptitle(f"Uncertainty over {ds.sizes['sample']} samples{_interventions(ds)}", fontsize=10)
    fig.tight_layout()
    return fig


def _interventions(ds: xr.Dataset) -> str:
    """`` (<interventions>)`` for a title, or nothing for a plain rollout."""
    what = ds.attrs.get("interventions", "none")
    return "" if what == "none" else f" ({what})"


def plot_metrics(ds: xr.Dataset) -> plt.Figure:
    """PSNR and SSIM against the number of frames predicted after the context (paper Figure 1).
    Under the paper's protocol each sequence counts with its best sample of the metric (``psnr_best``,
    ``ssim_best``), as the official evaluation plotted it; otherwise every sample of every sequence counts. The
    solid line is the mean of those curves, the band one standard deviation either side; dashed lines are the
    baselines that repeat the last context frame or show a random frame. Frames without ground truth and
    infinite PSNR (a frame predicted exactly) are left out."""
    future = ~ds.is_context.values
    steps = frames_ahead(ds)[future]
    best = ds.attrs.get("protocol") == "paper"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        scores = _finite(_curves(ds, metric, best).isel(time=future))
        mean = scores.mean("curve").values
        std = scores.std("curve").values
        ax.plot(steps, mean, color="C0", label="CW-VAE, best sample" if best else "CW-VAE")
        ax.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.25, linewidth=0)
        for baseline, color in (("last_frame", "C1"), ("random_frame", "C2")):
            curve = _finite(ds[f"{metric}_{baseline}"].isel(time=future)).mean("sequence").values
            ax.plot(steps, curve, "--", color=color, label=baseline.replace("_", " "))
        ax.set_xlabel("frames predicted")
        ax.set_ylabel(f"{metric.upper()}{' (dB)' if metric == 'psnr' else ''}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    over = (f"the best of {ds.sizes['sample']} samples per sequence, mean and std over sequences" if best
            else "mean and std over sequences and samples")
    protocol = ds.attrs.get("protocol")
    fig.suptitle(f"Open-loop prediction quality{f' ({protocol} protocol)' if protocol else ''}: {over}", fontsize=10)
    fig.tight_layout()
    return fig


def _curves(ds: xr.Dataset, metric: str, best: bool) -> xr.DataArray:
    """The curves of ``metric`` that the figure averages, along a dim ``curve``: one per sequence (its best sample)
    or one per sample and sequence."""
    if best:
        return ds[f"{metric}_best"].rename(sequence="curve")
    return ds[metric].stack(curve=("sample", "sequence"))


def plot_kl(ds: xr.Dataset) -> plt.Figure:
    """KL divergence of each level: per training sequence (paper Table 1) and over time.
    Left: ``kl_table``, the KL summed over a training sequence's frames and averaged over such windows of the
    test videos, one bar per level (level 1 is the fastest); none when the videos hold no whole window.
    Right: the KL of each level at the frames where that level is active (mean over sequences); the
    dotted line marks the end of the context."""
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(10, 3.8))
    levels = ds.level.values
    table = ds.kl_table.values
    bars.bar([str(level) for level in levels], np.nan_to_num(table), color=[f"C{i}" for i in range(len(levels))])
    if not np.isfinite(table).any():
        bars.text(0.5, 0.5, "no whole training sequence\nin the frames with a KL", ha="center", va="center",
                  transform=bars.transAxes)
    bars.set_xlabel("level")
    bars.set_ylabel("KL (nats)")
    frames = ds.kl_table.attrs.get("frames_per_sequence", "?")
    bars.set_title(f"KL per training sequence of {frames} frames (Table 1)", fontsize=10)

    over_time = ds.kl.mean("sequence")
    times = ds.time.values
    for i, level in enumerate(levels):
        values = over_time.sel(level=level).values
        active = np.isfinite(values)
        curves.plot(times[active], values[active], "-o", color=f"C{i}", markersize=2.5, linewidth=1,
                    label=f"level {level}")
    context = ds.is_context.values
    if context.any():
        curves.axvline(times[context][-1], color="gray", linestyle=":", linewidth=1)
    curves.set_xlabel("time (frames)")
    curves.set_ylabel("KL (nats)")
    curves.set_title("KL at the frames where each level is active", fontsize=10)
    curves.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_gif(ds: xr.Dataset, path: Path) -> Path:
    """Animate to ``path`` the ground truth, then every sample, in one row per sequence of ``ds``, upscaled
    ``GIF_SCALE`` times, under a header that says the time and whether the frame is context (the model's
    reconstruction) or an open-loop prediction; at most ``GIF_MAX_FRAMES`` frames, evenly spaced in time."""
    sub = ds.isel(time=evenly_spaced(ds.sizes["time"], GIF_MAX_FRAMES))
    truth = to_hwc(sub.truth.values)  # (sequence, time, H, W, C)
    pred = to_hwc(sub.prediction.values)  # (sample, sequence, time, H, W, C)
    images = []
    for i, (time, context) in enumerate(zip(sub.time.values, sub.is_context.values)):
        columns = [truth[:, i]] + [pred[s, :, i] for s in range(sub.sizes["sample"])]
        rows = [np.stack([col[seq] for col in columns]) for seq in range(sub.sizes["sequence"])]
        mosaic, _, _ = tile_frames(rows, group=1)
        frame = Image.fromarray(display_frames(mosaic.repeat(GIF_SCALE, 0).repeat(GIF_SCALE, 1)))
        kind = "context" if context else "prediction"
        images.append(_with_header(frame, f"t={int(time)} {kind}: truth, then samples"))
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=GIF_FRAME_MS, loop=0)
    return path


def _strip_times(ds: xr.Dataset, max_frames: int) -> np.ndarray:
    """Positions along ``time`` for the strip: evenly spaced context frames (the last one included), then
    evenly spaced predictions."""
    context = np.flatnonzero(ds.is_context.values)
    future = np.flatnonzero(~ds.is_context.values)
    return np.concatenate([context[evenly_spaced(len(context), _STRIP_CONTEXT)],
                           future[evenly_spaced(len(future), max_frames)]])


def evenly_spaced(length: int, count: int) -> np.ndarray:
    """At most ``count`` distinct indices into ``length`` items, evenly spaced, first and last included."""
    return np.unique(np.linspace(0, length - 1, min(length, count)).round().astype(int))


def _finite(scores: xr.DataArray) -> xr.DataArray:
    return scores.where(np.isfinite(scores))


def to_hwc(frames: np.ndarray) -> np.ndarray:
    """Move the channel axis of ``(..., C, H, W)`` frames last: ``(..., H, W, C)``."""
    return np.moveaxis(frames, -3, -1)


def display_frames(mosaic: np.ndarray) -> np.ndarray:
    """Drop the channel axis of a grayscale mosaic so it shows and saves as gray."""
    return mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic


def tile_frames(rows: list[np.ndarray], group: int) -> tuple[np.ndarray, list[float], list[float]]:
    """Tile rows of frames ``(cols, H, W, C)`` into one white-separated uint8 image.
    Every ``group`` rows form a block set apart by a wider gap. Returns the image and the pixel centres
    of its rows and columns (for labels)."""
    cols, height, width, channels = rows[0].shape
    row_tops = [i * (height + _GAP) + (i // group) * (_GROUP_GAP - _GAP) for i in range(len(rows))]
    col_lefts = [j * (width + _GAP) for j in range(cols)]
    canvas = np.full((row_tops[-1] + height, col_lefts[-1] + width, channels), 255, dtype=np.uint8)
    for top, row in zip(row_tops, rows):
        for left, frame in zip(col_lefts, row):
            canvas[top : top + height, left : left + width] = frame
    row_centres = [top + (height - 1) / 2 for top in row_tops]
    col_centres = [left + (width - 1) / 2 for left in col_lefts]
    return canvas, row_centres, col_centres


def _with_header(frame: Image.Image, text: str) -> Image.Image:
    """Return ``frame`` below a white band that carries ``text``."""
    framed = Image.new(frame.mode, (frame.width, frame.height + 14), "white")
    framed.paste(frame, (0, 14))
    ImageDraw.Draw(framed).text((2, 1), text, fill="black")
    return framed
